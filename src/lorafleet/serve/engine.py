"""vLLM replicas as child processes: start, watch, restart with backoff, stop — and never leave orphans.

Each replica runs in its own process group (so one signal reaches vLLM's engine-core and worker
processes too) under `serve.launcher`, which arms a parent-death signal: if the gateway is killed,
even with SIGKILL, the kernel sends the replica SIGTERM. Each start gets a fresh loopback port and a
fresh random API key, so nothing but this gateway can use the engine's routes. Output goes to
`LORAFLEET_HOME/logs/replica-N.log`.

Call `start`, `poll` and `stop` from one long-lived thread (the event loop's): Linux delivers the
parent-death signal when the *thread* that forked the child exits.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lorafleet.serve.flags import EnginePlan, ReplicaSlot, engine_argv, engine_env

log = logging.getLogger("lorafleet.serve.engine")


@dataclass(frozen=True)
class EngineTarget:
    """What the replicas serve: the base model folder and the name clients and the gateway use for it."""

    model_path: str
    served_name: str
    extra_args: tuple[str, ...] = ()


@dataclass
class ReplicaProcess:
    """One spawned replica; `url` and `api_key` change on every (re)start."""

    slot: ReplicaSlot
    log_path: Path
    process: subprocess.Popen | None = None
    port: int = 0
    api_key: str = ""
    starts: int = 0
    crashes_in_a_row: int = 0
    restart_at: float | None = None  # monotonic time of the next start after a crash
    started_at: float = 0.0
    ready: bool = False  # has passed a health check since its last start
    exit_codes: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"replica-{self.slot.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def restart_delay(crashes_in_a_row: int, base_s: float, max_s: float) -> float:
    """Exponential backoff: base, 2·base, 4·base … capped at max_s."""
    return min(max_s, base_s * 2 ** max(0, crashes_in_a_row - 1))


def free_port() -> int:
    """A loopback port free right now (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_command(plan: EnginePlan, slot: ReplicaSlot, target: EngineTarget, port: int, api_key: str) -> tuple[list[str], dict[str, str]]:
    """The argv (wrapped in the launcher) and the extra environment of one replica."""
    argv = engine_argv(plan.flags, target.model_path, target.served_name, port, list(target.extra_args))
    wrapped = [sys.executable, "-m", "lorafleet.serve.launcher", str(os.getpid()), "--", *argv]
    return wrapped, {**engine_env(slot), "VLLM_API_KEY": api_key}


class EngineManager:
    """Owns the spawned replicas of one gateway."""

    def __init__(self, plan: EnginePlan, target: EngineTarget, log_dir: Path, backoff_s: float, backoff_max_s: float):
        self.plan, self.target = plan, target
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        log_dir.mkdir(parents=True, exist_ok=True)
        self.replicas = [ReplicaProcess(slot, log_dir / f"replica-{slot.index}.log") for slot in plan.slots]

    def start_all(self) -> None:
        for replica in self.replicas:
            self.start(replica)

    def start(self, replica: ReplicaProcess) -> None:
        """Start `replica` on a new port with a new API key; its output is appended to its log."""
        replica.port, replica.api_key = free_port(), secrets.token_hex(24)
        argv, extra_env = replica_command(self.plan, replica.slot, self.target, replica.port, replica.api_key)
        with replica.log_path.open("ab") as out:
            header = f"\n==== lorafleet: start #{replica.starts + 1} of {replica.name} on port {replica.port}, {time.ctime()}\n"
            out.write(header.encode())
            out.flush()
            replica.process = subprocess.Popen(
                argv, env={**os.environ, **extra_env}, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C goes to the gateway, which stops it in order
            )
        replica.starts += 1
        replica.restart_at = None
        replica.ready = False
        replica.started_at = time.monotonic()
        log.info("started %s (pid %d) on %s, log %s", replica.name, replica.process.pid, replica.url, replica.log_path)

    def poll(self, now: float, startup_timeout_s: float) -> list[ReplicaProcess]:
        """Notice crashed replicas (scheduling their restart), stop those that never became healthy
        within `startup_timeout_s` (they restart like a crash), and restart those whose backoff is over.

        Returns the replicas (re)started by this call, whose endpoints have changed.
        """
        restarted: list[ReplicaProcess] = []
        for replica in self.replicas:
            if replica.running and not replica.ready and now - replica.started_at > startup_timeout_s:
                log.warning("%s did not become healthy within %.0f s; stopping it", replica.name, startup_timeout_s)
                _kill_group(replica.process, signal.SIGKILL)
                replica.process.wait()
            if replica.process is not None and replica.process.poll() is not None and replica.restart_at is None:
                code = replica.process.returncode
                replica.exit_codes.append(code)
                replica.crashes_in_a_row += 1
                delay = restart_delay(replica.crashes_in_a_row, self.backoff_s, self.backoff_max_s)
                replica.restart_at = now + delay
                _kill_group(replica.process, signal.SIGKILL)  # its engine-core and workers may outlive it
                log.warning("%s exited with code %s; restarting in %.0f s (see %s)", replica.name, code, delay, replica.log_path)
            if replica.restart_at is not None and now >= replica.restart_at:
                self.start(replica)
                restarted.append(replica)
        return restarted

    def mark_healthy(self, name: str) -> None:
        """A replica that answered its health check: its next crash starts the backoff from the beginning."""
        for replica in self.replicas:
            if replica.name == name:
                replica.ready, replica.crashes_in_a_row = True, 0

    def kill_all(self) -> None:
        """SIGKILL every replica's process group now, without waiting (a second shutdown signal)."""
        for replica in self.replicas:
            if replica.process is not None:
                _kill_group(replica.process, signal.SIGKILL)
                replica.restart_at = None

    def stop_all(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every replica's process group, wait, then SIGKILL what is left."""
        for replica in self.replicas:
            if replica.process is not None:
                _kill_group(replica.process, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for replica in self.replicas:
            if replica.process is None:
                continue
            try:
                replica.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", replica.name, timeout_s)
            _kill_group(replica.process, signal.SIGKILL)  # vLLM's children too, whatever the server did
            replica.process.wait()
            replica.restart_at = None
        log.info("stopped %d replica(s)", len(self.replicas))


def _kill_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)  # start_new_session made the pid the group id
    except (ProcessLookupError, PermissionError):
        pass
