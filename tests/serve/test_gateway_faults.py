"""Gateway answers to engine faults: engine down → 503, engine error → 502 (cleaned), a stream that
breaks after its first byte → an error event; and client authentication. The gateway runs for real
against a real registry; the broken engine is the FAKE in fake_engine.py, and "down" is a closed port."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fake_engine import fake_engine_app, serve_in_thread
from lorafleet.serve.config import FleetConfig
from lorafleet.serve.engine import free_port
from lorafleet.serve.gateway import create_app

QUESTION = [{"role": "user", "content": "hi"}]


@pytest.fixture
def registry(lorafleet_home: Path, embedded_model: Path) -> Path:
    from lorafleet.registry.push import init_base

    init_base("smollm2-135m-instruct")
    return lorafleet_home


def start_gateway(engines: list[dict], tmp_path: Path, **options: object):  # type: ignore[no-untyped-def]
    config = FleetConfig(engines=engines, health_interval_s=0.2, registry_poll_s=0.2, **options)
    app = create_app(config, "smollm2-135m-instruct", capacity=4, log_path=tmp_path / "requests.jsonl")
    return serve_in_thread(app, free_port())


def wait_for(url: str, healthy: int) -> None:
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/health/ready").json().get("replicas_healthy") != healthy:
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.fixture
def fake_engine() -> Iterator[str]:
    with serve_in_thread(fake_engine_app(), free_port()) as url:
        yield url


def test_engine_down_is_503(registry: Path, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with start_gateway([{"url": closed}], tmp_path) as url:
        time.sleep(0.5)
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": "smollm2-135m-instruct", "messages": QUESTION})
        ready = httpx.get(f"{url}/health/ready")
        live = httpx.get(f"{url}/health/live")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "engine_unavailable" and set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert ready.status_code == 503 and ready.json()["replicas_healthy"] == 0
    assert live.status_code == 200


def test_engine_error_is_502_without_paths(registry: Path, tmp_path: Path, fake_engine: str) -> None:
    with start_gateway([{"url": fake_engine}], tmp_path) as url:
        wait_for(url, 1)
        ok = httpx.post(f"{url}/v1/chat/completions", json={"model": "smollm2-135m-instruct", "messages": QUESTION})
        failed = httpx.post(f"{url}/v1/chat/completions", json={"model": "smollm2-135m-instruct", "messages": QUESTION, "user": "fail"})
    assert ok.status_code == 200 and ok.headers["x-lorafleet-adapter"] == "smollm2-135m-instruct"
    assert failed.status_code == 502
    error = failed.json()["error"]
    assert error["type"] == "engine_error" and "Worker failed" in error["message"]
    assert "/srv" not in failed.text and "Traceback" not in failed.text


def test_stream_breaking_after_first_byte_ends_with_an_error_event(registry: Path, tmp_path: Path, fake_engine: str) -> None:
    with start_gateway([{"url": fake_engine}], tmp_path) as url:
        wait_for(url, 1)
        with httpx.stream("POST", f"{url}/v1/chat/completions",
                          json={"model": "smollm2-135m-instruct", "messages": QUESTION, "stream": True}) as response:
            assert response.status_code == 200
            events = [e for e in response.read().decode().split("\n\n") if e]
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["content"] == "half"
    assert json.loads(events[-1].removeprefix("data: "))["error"]["type"] == "engine_error"
    assert "[DONE]" not in events[-1]
    record = json.loads((tmp_path / "requests.jsonl").read_text().splitlines()[-1])
    assert record["status"] == 502 and record["stream"] is True


def test_registry_keys_and_revocation(registry: Path, tmp_path: Path, fake_engine: str) -> None:
    from lorafleet.registry.keys import create_key, revoke_key

    key, token = create_key("team-a", None)
    with start_gateway([{"url": fake_engine}], tmp_path) as url:
        wait_for(url, 1)
        body = {"model": "smollm2-135m-instruct", "messages": QUESTION}
        missing = httpx.post(f"{url}/v1/chat/completions", json=body)
        wrong = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token[:-2]}xx"})
        right = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})
        revoke_key(key.key_id)
        revoked_at = time.monotonic()
        while httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200:
            assert time.monotonic() - revoked_at < 2.0, "revocation not effective within 2 s"
            time.sleep(0.05)
        after = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})
    assert missing.status_code == wrong.status_code == after.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key" and after.json() == missing.json()
    assert right.status_code == 200
