"""Pure rules for version references and alias routing: parsing, weights, promote and rollback.

An alias is the public model name clients ask for; its routing is a list of versions with integer
weights summing to 100 (a canary is `support@v1=90 support@v2=10`). Every change to an alias appends
a revision to its history; nothing in the history is ever rewritten.

Rollback semantics (undo): each revision records `previous_revision`, the revision that was live
before it. Rollback appends a new revision that restores the live revision's `previous_revision`,
and the new revision inherits *that* revision's own `previous_revision`. So a second rollback goes
one step further back (like undo), until the first routing, where rollback refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from lorafleet.registry.errors import InvalidSpec, NothingToRollBack

_TARGET = re.compile(r"(?P<name>[^@=]+)@v(?P<version>[0-9]+)(?:=(?P<weight>[0-9]+))?", re.ASCII)
_REF = re.compile(r"(?P<name>[^@=]+)(?:@v(?P<version>[0-9]+))?", re.ASCII)

Action = Literal["set", "promote", "rollback"]


@dataclass(frozen=True)
class Route:
    """One version an alias sends traffic to, with its share in percent."""

    name: str
    version: int
    weight: int

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


@dataclass(frozen=True)
class AliasRevision:
    """One entry in an alias's history: the routing that became live at `created_at`."""

    alias: str
    revision: int
    action: Action
    routes: tuple[Route, ...]
    fallback_prompt: str | None
    previous_revision: int | None  # the revision that was live before this one; None for the first
    created_at: datetime


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`NAME` or `NAME@vN` → (name, version or None). Raises InvalidSpec on anything else."""
    match = _REF.fullmatch(ref)
    if not match:
        raise InvalidSpec(f"{ref!r} is not a version reference: write NAME or NAME@vN (e.g. support@v3)")
    version = match["version"]
    return match["name"], int(version) if version is not None else None


def parse_version_ref(ref: str) -> tuple[str, int]:
    """`NAME@vN` → (name, N); the version is required. Raises InvalidSpec."""
    name, version = parse_ref(ref)
    if version is None:
        raise InvalidSpec(f"{ref!r} names no version: write {ref}@vN (see `lorafleet adapters list`)")
    return name, version


def parse_routing(specs: list[str]) -> tuple[Route, ...]:
    """Targets `NAME@vN[=WEIGHT]` → routes, enforcing the weight rules.

    Rules: at least one target; a single target may omit its weight (it gets 100); with several
    targets every one needs a weight; weights are integers from 1 to 100 that sum to exactly 100;
    no version appears twice. Raises InvalidSpec naming the rule that was broken.
    """
    if not specs:
        raise InvalidSpec("an alias needs at least one target NAME@vN[=WEIGHT]")
    parsed: list[tuple[str, int, int | None]] = []
    for spec in specs:
        match = _TARGET.fullmatch(spec)
        if not match:
            raise InvalidSpec(f"{spec!r} is not a target: write NAME@vN or NAME@vN=WEIGHT (e.g. support@v2=10)")
        weight = match["weight"]
        parsed.append((match["name"], int(match["version"]), int(weight) if weight is not None else None))
    if len(parsed) == 1 and parsed[0][2] is None:
        name, version, _ = parsed[0]
        return (Route(name, version, 100),)
    missing = [f"{n}@v{v}" for n, v, w in parsed if w is None]
    if missing:
        raise InvalidSpec(f"with several targets each needs a weight: add =WEIGHT to {', '.join(missing)}")
    seen: set[tuple[str, int]] = set()
    for name, version, weight in parsed:
        if (name, version) in seen:
            raise InvalidSpec(f"{name}@v{version} appears twice: list each version once with its whole weight")
        seen.add((name, version))
        if not 1 <= weight <= 100:  # type: ignore[operator]
            raise InvalidSpec(f"{name}@v{version}={weight}: a weight is an integer from 1 to 100 (percent of traffic)")
    total = sum(w for _, _, w in parsed)  # type: ignore[misc]
    if total != 100:
        raise InvalidSpec(f"weights sum to {total}, they must sum to 100 (e.g. support@v1=90 support@v2=10)")
    return tuple(Route(n, v, w) for n, v, w in parsed)  # type: ignore[arg-type]


def promote_routing(name: str, version: int) -> tuple[Route, ...]:
    """Promote = all traffic to one version."""
    return (Route(name, version, 100),)


def rollback_plan(history: list[AliasRevision]) -> tuple[AliasRevision, int | None]:
    """Which revision a rollback restores, and the `previous_revision` the new revision records.

    `history` is the alias's revisions in order; the last one is live. Raises NothingToRollBack
    when the live routing has nothing before it.
    """
    if not history:
        raise NothingToRollBack("the alias has no routing yet: create it with `lorafleet adapters alias set`")
    live = history[-1]
    if live.previous_revision is None:
        raise NothingToRollBack(
            f"alias {live.alias!r} is at its first routing (revision {live.revision}); there is nothing to roll back to"
        )
    by_revision = {r.revision: r for r in history}
    restored = by_revision[live.previous_revision]
    return restored, restored.previous_revision


def describe_routing(routes: tuple[Route, ...] | list[Route]) -> str:
    """`support@v1=90 support@v2=10`, the same syntax `alias set` accepts."""
    return " ".join(f"{r.ref}={r.weight}" for r in routes)
