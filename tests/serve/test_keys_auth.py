"""API keys: the registry table (real SQLite), the `lorafleet keys` commands, and the auth decisions as tables of cases."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lorafleet.registry.aliases import Route
from lorafleet.registry.errors import InvalidSpec, NotFound
from lorafleet.registry.fleet import FleetView, ServedAlias
from lorafleet.registry.keys import (
    create_key, hash_secret, list_keys, read_key_snapshot, revoke_key, split_token, verify_secret,
)
from lorafleet.serve.auth import AuthState, Principal, auth_required, may_use, visible_models
from lorafleet.serve.errors import GatewayError

BASE = "base-model"
FLEET = FleetView(None, {
    "support": ServedAlias("support", 1, (Route("sup", 1, 90), Route("sup", 2, 10)), None),
    "billing": ServedAlias("billing", 1, (Route("bill", 3, 100),), None),
}, {})


def test_only_a_salted_scrypt_hash_is_stored(lorafleet_home: Path) -> None:
    key, token = create_key("team-a", ["support"], rpm=10)
    _, again = create_key("team-a", ["support"])
    key_id, secret = split_token(token) or ("", "")
    assert key_id == key.key_id and token.startswith("lfk_")
    rows = sqlite3.connect(lorafleet_home / "registry.db").execute("SELECT secret_hash FROM api_keys").fetchall()
    stored = "\n".join(r[0] for r in rows)
    assert secret not in stored and token not in stored and len(rows) == 2
    assert rows[0][0].startswith("scrypt$") and rows[0][0].split("$")[4] != rows[1][0].split("$")[4]  # salts differ
    assert verify_secret(secret, key.secret_hash) and not verify_secret(secret + "x", key.secret_hash)
    assert verify_secret("pw", hash_secret("pw", b"0" * 16)) and not verify_secret("pw", "md5$abc")


@pytest.mark.parametrize(("token", "expected"), [
    ("lfk_0123456789ab_secret", ("0123456789ab", "secret")),
    ("lfk_0123456789ab_se_cr-et", ("0123456789ab", "se_cr-et")),
    ("lfk_0123456789ab_", None), ("lfk_XYZ_secret", None), ("sk-abc", None), ("", None), ("lfk__x", None),
])
def test_split_token(token: str, expected: tuple[str, str] | None) -> None:
    assert split_token(token) == expected


def test_create_list_revoke(lorafleet_home: Path) -> None:
    assert read_key_snapshot().any_key_ever is False
    a, _ = create_key("team-a", ["support", "billing", "support"], rpm=5, tpm=100, max_concurrency=2)
    b, _ = create_key("ops", None, admin=True)
    assert a.aliases == ("billing", "support") and b.aliases is None and b.admin
    revoked = revoke_key(a.key_id)
    assert revoked.revoked_at is not None and revoke_key(a.key_id).revoked_at == revoked.revoked_at  # idempotent
    snapshot = read_key_snapshot()
    assert set(snapshot.keys) == {b.key_id} and snapshot.any_key_ever
    assert [k.public()["aliases"] for k in list_keys()] == [["billing", "support"], "all"]
    assert "secret_hash" not in list_keys()[0].public()
    with pytest.raises(NotFound):
        revoke_key("000000000000")
    for bad in ({"tenant": "bad tenant", "aliases": None}, {"tenant": "t", "aliases": []}, {"tenant": "t", "aliases": None, "rpm": 0}):
        with pytest.raises(InvalidSpec):
            create_key(**bad)  # type: ignore[arg-type]


def test_keys_cli_prints_the_key_once(lorafleet_home: Path) -> None:
    def cli(*args: str, code: int = 0) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "lorafleet.cli", "keys", *args], capture_output=True, text=True)
        assert result.returncode == code, result.stderr
        return result

    token = cli("create", "--tenant", "team-a", "--aliases", "support,billing", "--rpm", "60").stdout.strip()
    admin = json.loads(cli("create", "--tenant", "ops", "--admin", "--json").stdout)
    assert split_token(token) and admin["admin"] is True and admin["aliases"] == "all" and split_token(admin["key"])
    listing = json.loads(cli("list", "--json").stdout)
    assert [k["tenant"] for k in listing] == ["team-a", "ops"] and token not in json.dumps(listing)
    table = cli("list").stdout
    assert "team-a" in table and "billing,support" in table and token not in table
    assert json.loads(cli("revoke", token, "--json").stdout)["revoked_at"] is not None  # the whole key works as the id
    assert "--aliases" in cli("create", "--tenant", "x", code=2).stderr
    assert "no API key" in cli("revoke", "000000000000", code=2).stderr


@pytest.mark.parametrize(("mode", "any_key", "required"), [
    ("auto", False, False), ("auto", True, True), ("required", False, True), ("required", True, True),
    ("none", True, False), ("none", False, False),
])
def test_auth_required(mode: str, any_key: bool, required: bool) -> None:
    assert auth_required(mode, any_key) is required  # type: ignore[arg-type]


TEAM = Principal("team-a", "k", frozenset({"support", "gone"}))
EVERYTHING = Principal("ops", "k2", None)


@pytest.mark.parametrize(("principal", "model", "allowed"), [
    (TEAM, "support", True), (TEAM, "billing", False), (TEAM, BASE, True), (TEAM, "sup@v2", True), (TEAM, "bill@v3", False),
    (TEAM, "gone", True),  # allowed but not served: resolve() then answers the same 404 as for anything unknown
    (TEAM, "nope", False), (EVERYTHING, "billing", True), (EVERYTHING, "bill@v3", True), (EVERYTHING, "nope", True),
])
def test_may_use(principal: Principal, model: str, allowed: bool) -> None:
    assert may_use(principal, model, FLEET, BASE) is allowed


def test_visible_models() -> None:
    assert visible_models(TEAM, FLEET, BASE) == [BASE, "support"]
    assert visible_models(EVERYTHING, FLEET, BASE) == [BASE, "billing", "support"]


def test_auth_state_verifies_once_and_forgets_revoked_keys(lorafleet_home: Path) -> None:
    key, token = create_key("team-a", ["support"])
    state = AuthState("auto")

    async def scenario() -> None:
        state.update(read_key_snapshot())
        assert (await state.principal(f"Bearer {token}")).tenant == "team-a"
        assert key.key_id in state.verified
        for header in ("", f"Basic {token}", f"Bearer {token}x", "Bearer lfk_000000000000_x"):
            with pytest.raises(GatewayError) as refused:
                await state.principal(header)
            assert refused.value.status == 401
        revoke_key(key.key_id)
        state.update(read_key_snapshot())
        assert key.key_id not in state.verified
        with pytest.raises(GatewayError):
            await state.principal(f"Bearer {token}")
        assert (await AuthState("none").principal("")).admin
        fresh = create_key("team-b", None)[1]
        state.update(read_key_snapshot())
        burst = await asyncio.gather(*(state.principal(f"Bearer {fresh}") for _ in range(8)))  # one scrypt for the burst
        assert {p.tenant for p in burst} == {"team-b"} and not state.checking

    asyncio.run(scenario())
