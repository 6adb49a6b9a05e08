"""`lorafleet serve` assembled: registry → host → derived engine plan → replicas (or attached engines) → gateway.

    plan_fleet(config)   reads the registry and the host and derives the engine plan (pure below it)
    build_gateway(...)   the FastAPI app with its engine manager (spawn mode) or attached engines
    run(...)             uvicorn in this thread; SIGTERM/SIGINT drain, then stop the replicas (serve.drain)
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from lorafleet.models import ModelError, resolve_model
from lorafleet.paths import home_dir
from lorafleet.registry.fleet import FleetView, read_fleet
from lorafleet.serve.config import FleetConfig
from lorafleet.serve.drain import DrainingServer
from lorafleet.serve.engine import EngineManager, EngineTarget, replica_command
from lorafleet.serve.flags import EnginePlan, derive_plan
from lorafleet.serve.gateway import create_app
from lorafleet.serve.host import base_max_positions, detect_host

log = logging.getLogger("lorafleet.serve")


class ServeError(RuntimeError):
    """The fleet cannot start (no base model, model missing on this host); the message says what to do."""


@dataclass(frozen=True)
class FleetPlan:
    """Everything `serve` decided before starting anything."""

    fleet: FleetView
    target: EngineTarget
    plan: EnginePlan


def served_base_name(registry_name: str) -> str:
    """The base model's public name: the embedded name, or a local folder's last component (never a path)."""
    return Path(registry_name).name if "/" in registry_name else registry_name


def plan_fleet(config: FleetConfig) -> FleetPlan:
    """Read the registry and the host, derive the engine plan. Raises ServeError or EnginePlanError."""
    fleet = read_fleet()
    if fleet.base is None:
        raise ServeError("the registry has no base model: run `lorafleet adapters init --model M` and push adapters first")
    try:
        model_path = resolve_model(fleet.base.name).path
    except ModelError as exc:
        raise ServeError(f"the registry's base model {fleet.base.name} is not available on this host: {exc}") from None
    host = detect_host()
    plan = derive_plan(fleet.routed_versions(), base_max_positions(model_path), host, config)
    target = EngineTarget(str(model_path), served_base_name(fleet.base.name), tuple(config.engine_args))
    return FleetPlan(fleet, target, plan)


def engine_commands(planned: FleetPlan) -> list[str]:
    """One shell line per replica, as `serve` would start it (the API key is drawn at start)."""
    lines = [f"# {reason}" for reason in planned.plan.reasons]
    for slot in planned.plan.slots:
        argv, env = replica_command(planned.plan, slot, planned.target, port=0, api_key="<random per start>")
        command = argv[argv.index("--") + 1 :]  # without the parent-death launcher
        env_text = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        lines.append(f"# replica-{slot.index}\n{env_text} {shlex.join(command)}".replace("--port 0", "--port <free port>"))
    return lines


def build_gateway(config: FleetConfig, planned: FleetPlan) -> tuple[FastAPI, EngineManager | None]:
    """The gateway app and its engine manager: spawning `config.replicas` replicas, or attached to `config.engines` (no manager)."""
    logs = home_dir() / "logs"
    manager = None
    if not config.engines:
        manager = EngineManager(planned.plan, planned.target, logs, config.restart_backoff_s, config.restart_backoff_max_s)
    capacity = planned.plan.flags.max_cpu_loras if manager else config.max_cpu_loras
    request_log = config.request_log or logs / "requests.jsonl"
    return create_app(config, planned.target.served_name, capacity, request_log, manager), manager


def run(app: FastAPI, config: FleetConfig, manager: EngineManager | None = None) -> None:
    """Serve until SIGTERM/SIGINT; the first drains (serve.drain), then the app's shutdown stops the replicas."""
    server = DrainingServer(uvicorn.Config(app, host=config.host, port=config.port, log_level="info", access_log=False),
                            lambda: getattr(app.state, "gateway", None), config.drain_timeout_s,
                            manager.kill_all if manager is not None else lambda: None)
    server.run()
