"""Who gets into the console, without a browser: a real gateway app on a real registry with real keys
(no engine is needed for these answers). The browser tests (test_console_browser.py) cover the pages."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fake_engine import serve_in_thread
from lorafleet.registry.keys import create_key, revoke_key
from lorafleet.serve.config import FleetConfig
from lorafleet.serve.engine import free_port
from lorafleet.serve.gateway import create_app

BASE = "smollm2-135m-instruct"
PAGES = ["/ui/fleet", "/ui/adapters", "/ui/aliases", "/ui/metrics", "/ui/playground"]


@pytest.fixture
def registry(lorafleet_home: Path, embedded_model: Path) -> Path:
    from lorafleet.registry.push import init_base

    init_base(BASE)
    return lorafleet_home


def gateway(tmp_path: Path, auth: str = "auto") -> Iterator[str]:
    config = FleetConfig(auth=auth, registry_poll_s=0.2, health_interval_s=5)
    return serve_in_thread(create_app(config, BASE, capacity=4, log_path=tmp_path / "requests.jsonl"), free_port())


def log_in(client: httpx.Client, key: str) -> httpx.Response:
    return client.post("/ui/login", data={"key": key})


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf-token" content="([0-9a-f]+)"', html).group(1)  # type: ignore[union-attr]


def test_admin_login_sets_a_strict_httponly_cookie_and_opens_every_page(registry: Path, tmp_path: Path) -> None:
    _, admin = create_key("ops", None, admin=True)
    with gateway(tmp_path) as url, httpx.Client(base_url=url) as client:
        assert client.get("/ui/fleet").headers["location"] == "/ui/login"
        response = log_in(client, admin)
        assert response.status_code == 303 and response.headers["location"] == "/ui/fleet"
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        for page in PAGES:
            shown = client.get(page)
            assert shown.status_code == 200, page
            assert "frame-ancestors 'none'" in shown.headers["content-security-policy"]
            assert 'id="auth-banner"' not in shown.text
        assert client.get("/ui/api/metrics").status_code == 200
        assert not [path for path in client.get("/openapi.json").json()["paths"] if path.startswith("/ui")]  # a UI, not the API


def test_tenant_keys_and_bearer_headers_never_open_the_console(registry: Path, tmp_path: Path) -> None:
    _, tenant = create_key("acme", None)
    _, admin = create_key("ops", None, admin=True)
    with gateway(tmp_path) as url, httpx.Client(base_url=url) as client:
        refused = log_in(client, tenant)
        assert refused.status_code == 401 and "not an admin key" in refused.text and "set-cookie" not in refused.headers
        assert log_in(client, "lfk_000000000000_guess").status_code == 401
        for key in (tenant, admin):  # only the login form's session opens it, never an Authorization header
            headers = {"Authorization": f"Bearer {key}"}
            assert client.get("/ui/fleet", headers=headers).headers["location"] == "/ui/login"
            api = client.get("/ui/api/metrics", headers=headers)
            assert api.status_code == 401 and api.json()["error"]["code"] == "console_login_required"


def test_state_changes_need_the_sessions_csrf_token(registry: Path, tmp_path: Path) -> None:
    _, admin = create_key("ops", None, admin=True)
    with gateway(tmp_path) as url, httpx.Client(base_url=url) as client:
        log_in(client, admin)
        token = csrf_of(client.get("/ui/aliases").text)
        for headers in ({}, {"X-CSRF-Token": "0" * 64}):
            refused = client.post("/ui/api/aliases/support/rollback", headers=headers)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
        # with the token the registry answers, in OpenAI's error shape, naming the problem
        unknown = client.post("/ui/api/aliases/support/rollback", headers={"X-CSRF-Token": token})
        assert unknown.status_code == 400 and "no routing yet" in unknown.json()["error"]["message"]
        bad = client.post("/ui/api/aliases/support/weights", headers={"X-CSRF-Token": token},
                          json={"weights": [["x@v1", "90.5"], ["x@v2", "9.5"]]})
        assert bad.status_code == 400 and "whole number" in bad.json()["error"]["message"]
        missing = client.post("/ui/api/aliases/support/weights", headers={"X-CSRF-Token": token},
                              json={"weights": [["x@v1", "90"], ["x@v2", "10"]]})
        assert missing.status_code == 404 and "no adapter version x@v1" in missing.json()["error"]["message"]
        assert client.post("/ui/logout", headers={"X-CSRF-Token": token}).status_code == 303
        assert client.get("/ui/fleet").headers["location"] == "/ui/login"


def test_revoking_the_admin_key_ends_its_sessions(registry: Path, tmp_path: Path) -> None:
    key, admin = create_key("ops", None, admin=True)
    create_key("ops-2", None, admin=True)  # keys stay required after the revocation
    with gateway(tmp_path) as url, httpx.Client(base_url=url) as client:
        log_in(client, admin)
        assert client.get("/ui/fleet").status_code == 200
        revoke_key(key.key_id)
        deadline = time.monotonic() + 2  # the gateway re-reads keys every registry_poll_s (0.2 s here)
        while client.get("/ui/fleet").status_code == 200:
            assert time.monotonic() < deadline, "the session outlived its revoked key"
            time.sleep(0.05)
        assert client.get("/ui/fleet").headers["location"] == "/ui/login"


def test_a_recorded_eval_shows_on_its_adapter_page(registry: Path, tmp_path: Path, embedded_model: Path) -> None:
    from lorafleet.registry.evals import EvalRecord, EvalSummary, record
    from lorafleet.registry.push import push
    from registry.registry_artifacts import build_artifact

    push(build_artifact(tmp_path / "artifact", embedded_model), "support")
    record([EvalRecord("support", 1, "support", "2026-11-30T20:00:00+00:00", "dev.jsonl", "ab" * 32, 19, 20,
                       EvalSummary(scored=20, failed=1, json_valid=0.95, exact=0.7, fields={"category": 0.9}, latency_p50_s=0.5))])
    with gateway(tmp_path, "none") as url, httpx.Client(base_url=url, follow_redirects=True) as client:
        client.get("/ui")  # opens the session of a gateway without keys
        page = client.get("/ui/adapters/support@v1")
        assert page.status_code == 200 and str(page.url).endswith("/ui/adapters/support@v1")
        table = page.text[page.text.index('<table id="evals">'):]
        for shown in ("2026-11-30 20:00:00", "dev.jsonl (abababababab)", "19 of 20, 1 failed", "95.0%", "category 90.0%", "70.0%"):
            assert shown in table, shown


@pytest.mark.parametrize("auth, says", [("none", "--auth none"), ("auto", "No API key exists yet")])
def test_without_keys_the_console_opens_with_a_banner(registry: Path, tmp_path: Path, auth: str, says: str) -> None:
    with gateway(tmp_path, auth) as url, httpx.Client(base_url=url, follow_redirects=True) as client:
        page = client.get("/ui")
        assert page.status_code == 200 and str(page.url).endswith("/ui/fleet")
        assert 'id="auth-banner"' in page.text and says in page.text
        token = csrf_of(page.text)  # the open session still carries a CSRF token
        assert client.post("/ui/api/aliases/support/rollback").status_code == 403
        assert client.post("/ui/api/aliases/support/rollback", headers={"X-CSRF-Token": token}).status_code == 400
