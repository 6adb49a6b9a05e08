"""Alias rules as pure functions: target parsing, the weight rules, promote, rollback planning."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from lorafleet.registry.aliases import (
    AliasRevision, Route, describe_routing, parse_ref, parse_routing, parse_version_ref, promote_routing, rollback_plan,
)
from lorafleet.registry.errors import InvalidSpec, NothingToRollBack


def test_single_target_without_weight_gets_everything() -> None:
    assert parse_routing(["support@v3"]) == (Route("support", 3, 100),)
    assert parse_routing(["support@v3=100"]) == (Route("support", 3, 100),)


def test_canary_split() -> None:
    routes = parse_routing(["support@v1=90", "support@v2=10"])
    assert routes == (Route("support", 1, 90), Route("support", 2, 10))
    assert describe_routing(routes) == "support@v1=90 support@v2=10"
    assert parse_routing(describe_routing(routes).split()) == routes  # describe is what set accepts


@pytest.mark.parametrize("specs, message", [
    ([], "at least one target"),
    (["support@v1=90", "support@v2=20"], "sum to 110"),
    (["support@v1=50"], "sum to 50"),
    (["support@v1=90", "support@v2"], "each needs a weight"),
    (["support@v1=50", "support@v1=50"], "appears twice"),
    (["support@v1=100", "support@v2=0"], "from 1 to 100"),
    (["support@v1=101"], "from 1 to 100"),
    (["support@v1=-5"], "is not a target"),
    (["support@v1=12.5", "support@v2=87.5"], "is not a target"),
    (["support"], "is not a target"),
    (["support@1"], "is not a target"),
    (["support@v1=x"], "is not a target"),
])
def test_weight_rules(specs: list[str], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        parse_routing(specs)


def test_refs() -> None:
    assert parse_ref("support") == ("support", None)
    assert parse_ref("support@v12") == ("support", 12)
    assert parse_version_ref("support@v2") == ("support", 2)
    with pytest.raises(InvalidSpec, match="names no version"):
        parse_version_ref("support")
    with pytest.raises(InvalidSpec):
        parse_ref("support@latest")
    assert promote_routing("support", 4) == (Route("support", 4, 100),)


def _rev(n: int, previous: int | None, version: int) -> AliasRevision:
    return AliasRevision("chat", n, "set", (Route("support", version, 100),), None, previous,
                         datetime(2026, 1, 1, tzinfo=timezone.utc))


def test_rollback_plan_walks_back_like_undo() -> None:
    history = [_rev(1, None, 1), _rev(2, 1, 2), _rev(3, 2, 3)]
    restored, previous = rollback_plan(history)
    assert (restored.revision, previous) == (2, 1)
    history.append(AliasRevision("chat", 4, "rollback", restored.routes, None, previous, restored.created_at))
    restored, previous = rollback_plan(history)  # a second rollback goes one further back
    assert (restored.revision, previous) == (1, None)
    history.append(AliasRevision("chat", 5, "rollback", restored.routes, None, previous, restored.created_at))
    with pytest.raises(NothingToRollBack, match="first routing"):
        rollback_plan(history)
    with pytest.raises(NothingToRollBack):
        rollback_plan([])
