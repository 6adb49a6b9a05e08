"""Tenants at the gateway (a real gateway on a real registry; no engine is needed for these answers):
alias visibility, the same 404 for a forbidden and an unknown alias, admin-only routes."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from lorafleet.registry.aliases import Route
from lorafleet.registry.fleet import FleetView, ServedAlias, read_fleet
from lorafleet.registry.keys import create_key
from lorafleet.serve.config import FleetConfig
from lorafleet.serve.engine import free_port
from lorafleet.serve.gateway import create_app

from fake_engine import serve_in_thread

BASE = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "hi"}]


def two_tenant_fleet() -> FleetView:
    real = read_fleet()  # the base model row comes from the real registry
    return FleetView(real.base, {"support": ServedAlias("support", 1, (Route("sup", 1, 100),), None),
                                 "billing": ServedAlias("billing", 1, (Route("bill", 1, 100),), None)}, {})


@pytest.fixture
def gateway(lorafleet_home: Path, embedded_model: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    from lorafleet.registry.push import init_base

    init_base(BASE)
    keys = {"team": create_key("team-a", ["support"])[1], "ops": create_key("ops", None, admin=True)[1],
            "all": create_key("team-b", None)[1]}
    config = FleetConfig(engines=[{"url": f"http://127.0.0.1:{free_port()}"}], registry_poll_s=0.2, health_interval_s=5,
                         metrics_require_admin=True)
    app = create_app(config, BASE, capacity=4, log_path=tmp_path / "requests.jsonl", fleet_reader=two_tenant_fleet)
    with serve_in_thread(app, free_port()) as url:
        yield url, {name: {"Authorization": f"Bearer {token}"} for name, token in keys.items()}


def test_a_key_sees_only_its_aliases_and_a_forbidden_alias_is_an_unknown_one(gateway) -> None:  # type: ignore[no-untyped-def]
    url, keys = gateway
    listed = httpx.get(f"{url}/v1/models", headers=keys["team"]).json()
    assert [m["id"] for m in listed["data"]] == [BASE, "support"]
    assert [m["id"] for m in httpx.get(f"{url}/v1/models", headers=keys["all"]).json()["data"]] == [BASE, "billing", "support"]
    forbidden = httpx.post(f"{url}/v1/chat/completions", headers=keys["team"], json={"model": "billing", "messages": QUESTION})
    unknown = httpx.post(f"{url}/v1/chat/completions", headers=keys["team"], json={"model": "billing", "messages": QUESTION} | {"model": "nope"})
    pinned = httpx.post(f"{url}/v1/chat/completions", headers=keys["team"], json={"model": "bill@v1", "messages": QUESTION})
    assert forbidden.status_code == unknown.status_code == pinned.status_code == 404
    assert forbidden.json() == {"error": {**unknown.json()["error"], "message": unknown.json()["error"]["message"].replace("'nope'", "'billing'")}}
    assert "billing" not in unknown.text and "billing" not in forbidden.json()["error"]["message"].split("Served models")[1]
    assert httpx.get(f"{url}/v1/models").status_code == 401


def test_admin_routes_need_an_admin_key(gateway) -> None:  # type: ignore[no-untyped-def]
    url, keys = gateway
    for path in ("/admin/keys", "/admin/replicas", "/metrics", "/metrics/engines"):
        assert httpx.get(f"{url}{path}").status_code == 401, path
        tenant = httpx.get(f"{url}{path}", headers=keys["team"])
        assert tenant.status_code == 403 and tenant.json()["error"]["type"] == "permission_error", path
        assert httpx.get(f"{url}{path}", headers=keys["ops"]).status_code == 200, path
    for action in ("load", "unload"):  # engine control: admin only, and a name that does not exist is a 404
        path = f"{url}/admin/replicas/replica-0/{action}"
        assert httpx.post(path, json={"version": "sup@v1"}).status_code == 401
        assert httpx.post(path, headers=keys["team"], json={"version": "sup@v1"}).status_code == 403
        missing = httpx.post(f"{url}/admin/replicas/nope/{action}", headers=keys["ops"], json={"version": "sup@v1"})
        assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
    listing = httpx.get(f"{url}/admin/keys", headers=keys["ops"]).json()["data"]
    assert {k["tenant"] for k in listing} == {"team-a", "ops", "team-b"} and "hash" not in str(listing)
    created = httpx.post(f"{url}/admin/keys", headers=keys["ops"], json={"tenant": "team-c", "aliases": ["billing"]})
    assert created.status_code == 201 and created.json()["key"].startswith("lfk_")
    new = {"Authorization": f"Bearer {created.json()['key']}"}
    deadline = time.monotonic() + 2
    while httpx.get(f"{url}/v1/models", headers=new).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [m["id"] for m in httpx.get(f"{url}/v1/models", headers=new).json()["data"]] == [BASE, "billing"]
    bad = httpx.post(f"{url}/admin/keys", headers=keys["ops"], json={"tenant": "x", "rpm": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm"
    assert httpx.post(f"{url}/admin/keys/{created.json()['key_id']}/revoke", headers=keys["team"]).status_code == 403
    assert httpx.post(f"{url}/admin/keys/{created.json()['key_id']}/revoke", headers=keys["ops"]).json()["revoked_at"]
    assert httpx.post(f"{url}/admin/keys/000000000000/revoke", headers=keys["ops"]).status_code == 404
