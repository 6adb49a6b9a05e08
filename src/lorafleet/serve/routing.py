"""Pure routing decisions, no I/O: model name → target (base, alias, pinned version), alias → version
(weighted canary, sticky), version → replica (rendezvous hashing), which adapter a full replica
unloads (LRU), when a failed load is retried, and what the base model sees in a fallback.

Every hash is `stable_hash` (blake2b), never Python's per-process salted `hash()`, so every gateway
process — and every gateway sharing one registry — makes the same choice for the same input.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lorafleet.registry.aliases import Route
from lorafleet.registry.fleet import FleetView, ServedVersion

WEIGHT_TOTAL = 100  # alias weights are percentages summing to 100 (registry.aliases.parse_routing)


def stable_hash(*parts: str) -> int:
    """A 64-bit hash of the parts, the same in every process and on every machine."""
    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class Pick:
    """The version a request goes to, and whether the alias was splitting traffic (a canary)."""

    route: Route
    canary: bool


def pick_route(alias: str, routes: tuple[Route, ...], sticky_key: str | None, rng: random.Random) -> Pick:
    """Choose one of the alias's routes in proportion to its weight.

    With a sticky key (the request's X-Session-Id or `user`) the choice is a stable hash of alias and
    key, so one user keeps one version while the weights stay the same; when weights shift, only the
    users whose slot moved change version, because routes are walked in a canonical order.
    Without a key the choice is random. Raises ValueError for an alias with no routes.
    """
    if not routes:
        raise ValueError(f"alias {alias!r} has no routes")
    ordered = sorted(routes, key=lambda r: (r.name, r.version))
    total = sum(r.weight for r in ordered)
    slot = stable_hash(alias, sticky_key) % total if sticky_key is not None else rng.randrange(total)
    for route in ordered:
        if slot < route.weight:
            return Pick(route, canary=len(ordered) > 1)
        slot -= route.weight
    raise AssertionError("unreachable: slot < total weight")


def rank_replicas(key: str, replicas: Iterable[str]) -> list[str]:
    """Rendezvous (highest-random-weight) order of `replicas` for `key`: serve on the first, retry on the next.

    A key's first choice changes only when that replica leaves, or when a new replica outranks it
    (about 1/(N+1) of keys), so adapters stay warm where they were loaded.
    """
    return sorted(replicas, key=lambda replica: (stable_hash(replica, key), replica), reverse=True)


def eviction_plan(last_used: Mapping[str, float], capacity: int, incoming: str, busy: frozenset[str] = frozenset()) -> list[str]:
    """Which resident adapters to unload so that `incoming` fits in `capacity` slots, least recently used first.

    `last_used` maps each resident adapter to when it last served (monotonic seconds). Adapters
    serving requests right now (`busy`) are never chosen; if only busy ones remain, fewer are
    evicted and the replica runs over its limit until they finish (vLLM's own cache still bounds memory).
    """
    if incoming in last_used:
        return []
    excess = len(last_used) + 1 - capacity
    if excess <= 0:
        return []
    idle = sorted((t, name) for name, t in last_used.items() if name not in busy)
    return [name for _, name in idle[:excess]]


@dataclass(frozen=True)
class LoadFailure:
    """A failed load of one version on one replica, kept to decide when to try again."""

    at: float  # monotonic seconds
    reason: str


def should_try_load(failure: LoadFailure | None, now: float, cooldown_s: float) -> bool:
    """False while a recent load of this version on this replica failed: its traffic falls back instead."""
    return failure is None or now - failure.at >= cooldown_s


@dataclass(frozen=True)
class Target:
    """What a request's `model` resolved to: an adapter version, or the base model (`version` None)."""

    alias: str  # the name the client asked for
    version: ServedVersion | None
    fallback_prompt: str | None = None
    canary: bool = False

    @property
    def key(self) -> str:
        """What replicas are ranked by: the version, so it stays warm on one replica."""
        return self.version.ref if self.version else self.alias


def resolve(model: str, fleet: FleetView, base_name: str, sticky_key: str | None, rng: random.Random) -> Target | None:
    """`model` → target: the base model's name, an alias (its weighted pick), or a pinned `NAME@vN`.

    Returns None for a name the fleet does not serve (the gateway answers 404). An alias whose
    picked version is missing from the registry resolves to that alias with no version found → None.
    """
    if model == base_name:
        return Target(model, None)
    alias = fleet.aliases.get(model)
    if alias is not None and alias.routes:
        pick = pick_route(model, alias.routes, sticky_key, rng)
        version = fleet.versions.get(pick.route.ref)
        return Target(model, version, alias.fallback_prompt, pick.canary) if version else None
    version = fleet.versions.get(model)
    return Target(model, version) if version else None


def served_models(fleet: FleetView, base_name: str) -> list[str]:
    """What `/v1/models` lists: the base model, then the aliases."""
    return [base_name, *sorted(fleet.aliases)]


def fallback_messages(messages: list, fallback_prompt: str | None) -> list:
    """The conversation the base model answers in a fallback: the alias's fallback prompt in place of
    every system (or developer) message; unchanged when the alias has no fallback prompt."""
    if fallback_prompt is None:
        return messages
    kept = [m for m in messages if not (isinstance(m, dict) and m.get("role") in ("system", "developer"))]
    return [{"role": "system", "content": fallback_prompt}, *kept]
