"""Routing decisions: canary split and stickiness, rendezvous hashing, LRU eviction, load cool-down."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import pytest

from lorafleet.registry.aliases import Route
from lorafleet.serve.routing import LoadFailure, eviction_plan, pick_route, rank_replicas, should_try_load, stable_hash

CANARY = (Route("support", 1, 90), Route("support", 2, 10))


def test_stable_hash_is_the_same_in_another_process() -> None:
    # Python's hash() of a str is salted per process; ours must not be.
    code = "from lorafleet.serve.routing import stable_hash; print(stable_hash('support', 'user-42'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", **_env()})
    assert int(other.stdout) == stable_hash("support", "user-42")
    assert stable_hash("a", "bc") != stable_hash("ab", "c")  # parts are separated, not concatenated


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}


@pytest.mark.parametrize("weights", [(90, 10), (50, 50), (99, 1), (34, 33, 33), (100,)])
def test_random_split_matches_weights_within_binomial_tolerance(weights: tuple[int, ...]) -> None:
    routes = tuple(Route("m", i + 1, w) for i, w in enumerate(weights))
    rng = random.Random(7)
    n = 20_000
    counts = {r.version: 0 for r in routes}
    for _ in range(n):
        counts[pick_route("m", routes, None, rng).route.version] += 1
    for route in routes:
        p = route.weight / 100
        sigma = math.sqrt(n * p * (1 - p)) or 1
        assert abs(counts[route.version] - n * p) <= 4 * sigma, (route, counts)


def test_sticky_users_split_by_weight_within_binomial_tolerance() -> None:
    n = 20_000
    v2 = sum(pick_route("support", CANARY, f"user-{i}", random.Random(0)).route.version == 2 for i in range(n))
    assert abs(v2 - n * 0.1) <= 4 * math.sqrt(n * 0.1 * 0.9)


def test_a_sticky_user_always_gets_the_same_version_whatever_the_rng() -> None:
    for user in ("alice", "bob", "carol", "user-17"):
        picks = {pick_route("support", CANARY, user, random.Random(seed)).route for seed in range(50)}
        assert len(picks) == 1


def test_sticky_choice_does_not_depend_on_route_order() -> None:
    reordered = tuple(reversed(CANARY))
    for i in range(500):
        key = f"user-{i}"
        assert pick_route("support", CANARY, key, random.Random(0)).route == pick_route("support", reordered, key, random.Random(0)).route


def test_growing_the_canary_only_moves_users_towards_it() -> None:
    wider = (Route("support", 1, 70), Route("support", 2, 30))
    for i in range(2_000):
        key = f"user-{i}"
        before = pick_route("support", CANARY, key, random.Random(0)).route.version
        after = pick_route("support", wider, key, random.Random(0)).route.version
        assert not (before == 2 and after == 1)  # nobody on the canary is sent back


def test_canary_flag_and_single_route() -> None:
    assert pick_route("support", CANARY, "x", random.Random(0)).canary
    single = pick_route("support", (Route("support", 3, 100),), "x", random.Random(0))
    assert single.route.version == 3 and not single.canary
    with pytest.raises(ValueError, match="no routes"):
        pick_route("support", (), None, random.Random(0))


KEYS = [f"adapter-{i}@v{j}" for i in range(400) for j in (1, 2)]


def _owners(replicas: list[str]) -> dict[str, str]:
    return {key: rank_replicas(key, replicas)[0] for key in KEYS}


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_removing_one_replica_moves_only_its_keys(n: int) -> None:
    replicas = [f"replica-{i}" for i in range(n)]
    before = _owners(replicas)
    gone = replicas[n // 2]
    after = _owners([r for r in replicas if r != gone])
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == gone}
    assert moved  # the removed replica did own keys


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_adding_one_replica_moves_about_one_in_n_plus_one(n: int) -> None:
    replicas = [f"replica-{i}" for i in range(n)]
    before = _owners(replicas)
    after = _owners(replicas + ["replica-new"])
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "replica-new" for k in moved)  # keys move only to the newcomer
    p = 1 / (n + 1)
    assert abs(len(moved) - len(KEYS) * p) <= 4 * math.sqrt(len(KEYS) * p * (1 - p))


def test_ranking_is_a_stable_total_order_independent_of_input_order() -> None:
    replicas = ["http://a:8000", "http://b:8000", "http://c:8000"]
    ranking = rank_replicas("support@v2", replicas)
    assert sorted(ranking) == sorted(replicas)
    assert rank_replicas("support@v2", list(reversed(replicas))) == ranking
    assert rank_replicas("support@v2", []) == []


def test_keys_spread_over_replicas() -> None:
    owners = _owners(["r0", "r1", "r2", "r3"])
    counts = [list(owners.values()).count(r) for r in ("r0", "r1", "r2", "r3")]
    assert min(counts) > len(KEYS) / 4 * 0.75


@pytest.mark.parametrize(
    ("last_used", "capacity", "incoming", "busy", "expected"),
    [
        ({}, 2, "a", frozenset(), []),
        ({"a": 1.0}, 2, "b", frozenset(), []),
        ({"a": 1.0, "b": 2.0}, 2, "c", frozenset(), ["a"]),  # least recently used goes first
        ({"a": 5.0, "b": 2.0, "c": 9.0}, 3, "d", frozenset(), ["b"]),
        ({"a": 5.0, "b": 2.0, "c": 9.0}, 2, "d", frozenset(), ["b", "a"]),  # over the limit already: back under it
        ({"a": 1.0, "b": 2.0}, 2, "a", frozenset(), []),  # already resident: nothing to do
        ({"a": 1.0, "b": 2.0}, 2, "c", frozenset({"a"}), ["b"]),  # busy adapters are kept
        ({"a": 1.0, "b": 2.0}, 2, "c", frozenset({"a", "b"}), []),  # all busy: run over the limit
        ({"a": 1.0, "b": 2.0, "c": 3.0}, 1, "d", frozenset({"b"}), ["a", "c"]),
    ],
)
def test_lru_eviction_order(last_used, capacity, incoming, busy, expected) -> None:
    assert eviction_plan(last_used, capacity, incoming, busy) == expected


@pytest.mark.parametrize(
    ("failure", "now", "cooldown", "expected"),
    [
        (None, 100.0, 60.0, True),
        (LoadFailure(90.0, "refused"), 100.0, 60.0, False),  # failed 10 s ago: fall back
        (LoadFailure(40.0, "refused"), 100.0, 60.0, True),  # cool-down over: try again
        (LoadFailure(40.0, "refused"), 99.9, 60.0, False),
        (LoadFailure(100.0, "refused"), 100.0, 0.0, True),  # no cool-down configured
    ],
)
def test_cool_down_after_a_failed_load(failure, now, cooldown, expected) -> None:
    assert should_try_load(failure, now, cooldown) is expected
