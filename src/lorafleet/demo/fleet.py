"""The demo's fleet: its registry (two versions of `support`, a 90/10 canary) and `lorafleet serve` run in a thread.

The serve package runs the gateway in the foreground (`launch.run`); the demo needs it in the
background while it sends traffic, so `RunningFleet` wraps the same `plan_fleet` / `build_gateway`
in a uvicorn server on a thread. Stopping it runs the gateway's shutdown, which stops the replicas.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from lorafleet.models import EMBEDDED_DEFAULT
from lorafleet.registry.aliases import AliasRevision
from lorafleet.serve.config import FleetConfig
from lorafleet.serve.launch import build_gateway, plan_fleet


@dataclass(frozen=True)
class Pushed:
    """An artifact pushed as a version of the demo's alias."""

    ref: str
    artifact: Path
    reused_content: bool


def build_registry(alias: str, artifacts: list[Path], fallback_prompt: str) -> tuple[list[Pushed], AliasRevision]:
    """Register the base model, push `artifacts` in order as versions of `alias`, and route it
    90/10 between the first and the second (the canary). LORAFLEET_HOME must point at the demo's home."""
    from lorafleet.registry import service
    from lorafleet.registry.push import init_base, push

    init_base(EMBEDDED_DEFAULT)
    pushed = []
    for artifact in artifacts:
        result = push(artifact, alias)
        pushed.append(Pushed(result.ref, artifact, result.content_reused))
    stable, canary = pushed[0].ref, pushed[1].ref
    revision = service.set_alias(alias, [f"{stable}=90", f"{canary}=10"], fallback_prompt)
    return pushed, revision


class FleetNotReady(RuntimeError):
    """The replicas did not become healthy in time; the message points at their logs."""


class RunningFleet:
    """`lorafleet serve` (gateway + spawned vLLM replicas) running on a background thread."""

    def __init__(self, config: FleetConfig):
        self.config = config
        planned = plan_fleet(config)
        self.base_name = planned.target.served_name
        app, _ = build_gateway(config, planned)
        self._app = app
        self._server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", access_log=False))
        self._thread = threading.Thread(target=self._server.run, name="lorafleet-gateway", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def start(self, timeout_s: float, logs: Path) -> float:
        """Start the gateway and wait until every replica is healthy; returns the seconds it took.

        Raises FleetNotReady (after stopping what started) when that takes longer than `timeout_s`.
        """
        started = time.monotonic()
        self._thread.start()
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise FleetNotReady(f"the gateway stopped while starting; see {logs}")
            if self._ready():
                return time.monotonic() - started
            time.sleep(1)
        self.stop()
        raise FleetNotReady(f"the fleet was not ready within {timeout_s:.0f} s; see the replica logs in {logs}")

    def _ready(self) -> bool:
        try:
            body = httpx.get(f"{self.url}/health/ready", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return False
        return body.get("replicas_healthy") == self.config.replicas

    @property
    def request_log(self) -> Path:
        return self._app.state.gateway.request_log.path

    def flush_request_log(self) -> None:
        """Write out the gateway's buffered request log now rather than at its next one-second flush."""
        self._app.state.gateway.request_log.flush()  # RequestLog takes its own lock: safe from this thread

    def wait_for_route(self, alias: str, ref: str, timeout_s: float = 60) -> None:
        """Send one-token requests until `alias` is answered by `ref`: the gateway reads the registry
        every `registry_poll_s`, so an alias change takes effect within about a second.

        Raises TimeoutError when it has not after `timeout_s`.
        """
        body = {"model": alias, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}
        time.sleep(self.config.registry_poll_s + 0.2)  # a request before the change would count as canary traffic
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            response = httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=120)
            if response.status_code == 200 and response.headers.get("x-lorafleet-adapter") == ref:
                return
            time.sleep(0.5)
        raise TimeoutError(f"alias {alias!r} was not routed to {ref} within {timeout_s:.0f} s")

    def stop(self) -> None:
        """Stop the gateway; its shutdown stops the replicas (SIGTERM, then SIGKILL of their process groups)."""
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join()

    def wait(self) -> None:
        """Block until Ctrl-C, then stop."""
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=1)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
