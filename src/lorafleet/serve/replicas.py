"""The gateway's view of its replicas: which are healthy, which adapters each holds, and loading them.

`ensure_loaded` makes a version resident on a replica: one load at a time per (version, replica),
the store copy re-verified against its manifest first (a corrupted copy never reaches the engine),
the least recently used idle adapter unloaded when the replica is full. A failed load is remembered
for a cool-down, during which that version's traffic on that replica falls back to the base model.
Loaded names are `NAME@vN`: a version is immutable, so it is never reloaded in place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from lorafleet.artifact import verify_artifact
from lorafleet.registry.fleet import ServedVersion
from lorafleet.serve.metrics import GatewayMetrics
from lorafleet.serve.routing import LoadFailure, eviction_plan, should_try_load

log = logging.getLogger("lorafleet.serve.replicas")
SHORT = aiohttp.ClientTimeout(total=5.0)


@dataclass
class Replica:
    """One engine endpoint and what this gateway knows about it."""

    name: str
    url: str
    api_key: str | None
    healthy: bool = False
    base_model_id: str | None = None  # the engine's own name for the base model (from /v1/models)
    max_model_len: int | None = None  # the engine's context limit (from /v1/models)
    resident: dict[str, float] = field(default_factory=dict)  # NAME@vN → last used (monotonic)
    busy: Counter[str] = field(default_factory=Counter)  # NAME@vN → requests in flight
    failures: dict[str, LoadFailure] = field(default_factory=dict)
    load_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    down: asyncio.Event = field(default_factory=asyncio.Event)  # set when a health check fails: requests waiting on it give up

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def post_headers(self) -> dict[str, str]:
        return {**self.headers, "Content-Type": "application/json"}


@dataclass(frozen=True)
class LoadResult:
    """Whether the version is resident now; `reason` says why not (it becomes the fallback's reason)."""

    ok: bool
    reason: str = ""


class ReplicaPool:
    """Every replica the gateway routes to, and the HTTP client that talks to them."""

    def __init__(self, client: aiohttp.ClientSession, metrics: GatewayMetrics, capacity: int, load_timeout_s: float, cooldown_s: float):
        self.client, self.metrics = client, metrics
        self.capacity, self.load_timeout_s, self.cooldown_s = capacity, load_timeout_s, cooldown_s
        self.replicas: dict[str, Replica] = {}

    def add(self, name: str, url: str, api_key: str | None) -> Replica:
        replica = Replica(name, url, api_key)
        self.replicas[name] = replica
        self._publish(replica)
        return replica

    def set_endpoint(self, name: str, url: str, api_key: str | None) -> None:
        """A restarted replica: new address, nothing loaded, unhealthy until it answers."""
        replica = self.replicas[name]
        replica.url, replica.api_key, replica.healthy = url, api_key, False
        replica.resident.clear()
        replica.failures.clear()
        self._publish(replica)

    def healthy_names(self) -> list[str]:
        return [name for name, r in self.replicas.items() if r.healthy]

    def mark_down(self, replica: Replica, why: str) -> None:
        if replica.healthy:
            log.warning("%s (%s) is down: %s", replica.name, replica.url, why)
        replica.healthy = False
        self._publish(replica)

    async def check(self, replica: Replica) -> bool:
        """GET /health; on the way up, read what the engine holds (it may have restarted, or another gateway loaded)."""
        try:
            async with self.client.get(f"{replica.url}/health", timeout=SHORT) as response:
                up = response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            up = False
        if up and not replica.healthy:
            up = await self._sync(replica)
            if up:
                replica.down = asyncio.Event()
                log.info("%s (%s) is healthy, holding %d adapter(s)", replica.name, replica.url, len(replica.resident))
        elif not up:
            self.mark_down(replica, "health check failed")
            replica.down.set()  # confirmed by a probe, not one failed request: requests waiting on it give up
        replica.healthy = up
        self._publish(replica)
        return up

    async def _sync(self, replica: Replica) -> bool:
        try:
            async with self.client.get(f"{replica.url}/v1/models", headers=replica.headers, timeout=SHORT) as response:
                response.raise_for_status()
                cards = (await response.json())["data"]
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError):
            return False
        base_card = next((c for c in cards if not c.get("parent")), {})
        replica.base_model_id, replica.max_model_len = base_card.get("id"), base_card.get("max_model_len")
        now = time.monotonic()
        replica.resident = {c["id"]: now for c in cards if c.get("parent")}
        return True

    async def ensure_loaded(self, replica: Replica, version: ServedVersion) -> LoadResult:
        """Make `version` resident on `replica` (see the module docstring). Never raises for a failed load."""
        ref = version.ref
        if ref in replica.resident:
            replica.resident[ref] = time.monotonic()
            return LoadResult(True)
        lock = replica.load_locks.setdefault(ref, asyncio.Lock())
        async with lock:
            if ref in replica.resident:  # loaded by the request we waited for
                return LoadResult(True)
            failure = replica.failures.get(ref)
            if not should_try_load(failure, time.monotonic(), self.cooldown_s):
                return LoadResult(False, failure.reason if failure else "")
            result = await self._load(replica, version)
            if result.ok:
                replica.failures.pop(ref, None)
            elif result.reason != "engine_down":  # a dead engine is the replica's failure, not the adapter's
                replica.failures[ref] = LoadFailure(time.monotonic(), result.reason)
                self.metrics.adapter_load_failures.labels(version=ref, replica=replica.name, reason=result.reason).inc()
                log.warning("loading %s on %s failed (%s); its traffic there falls back to the base model for %.0f s",
                            ref, replica.name, result.reason, self.cooldown_s)
            return result

    async def _load(self, replica: Replica, version: ServedVersion) -> LoadResult:
        ref = version.ref
        problems = await asyncio.to_thread(verify_artifact, version.content_path)
        if problems:
            log.warning("store copy of %s does not verify: %s", ref, "; ".join(problems[:3]))
            return LoadResult(False, "corrupt")
        for name in eviction_plan(replica.resident, self.capacity, ref, frozenset(n for n, c in replica.busy.items() if c)):
            await self.unload(replica, name, "least recently used")
        started = time.perf_counter()
        try:
            async with self.client.post(
                f"{replica.url}/v1/load_lora_adapter", headers=replica.headers, timeout=aiohttp.ClientTimeout(total=self.load_timeout_s),
                json={"lora_name": ref, "lora_path": str(version.content_path)},
            ) as response:
                status, text = response.status, await response.text()
        except asyncio.TimeoutError:
            return LoadResult(False, "timeout")
        except aiohttp.ClientError:
            self.mark_down(replica, "adapter load could not connect")
            return LoadResult(False, "engine_down")
        already = status == 400 and "already been loaded" in text  # another gateway loaded it
        if status != 200 and not already:
            log.warning("engine %s refused %s: HTTP %d %s", replica.name, ref, status, text[:300])
            return LoadResult(False, "refused")
        seconds = time.perf_counter() - started
        replica.resident[ref] = time.monotonic()
        self.metrics.adapter_loads.labels(version=ref, replica=replica.name).inc()
        self.metrics.adapter_load_seconds.observe(seconds)
        self._publish(replica)
        log.info("loaded %s on %s in %.0f ms", ref, replica.name, seconds * 1000)
        return LoadResult(True)

    async def unload(self, replica: Replica, ref: str, why: str) -> None:
        """Unload `ref` from `replica` (a 404 means it was gone already); `why` goes to the log."""
        replica.resident.pop(ref, None)
        try:
            async with self.client.post(f"{replica.url}/v1/unload_lora_adapter", headers=replica.headers, json={"lora_name": ref},
                                        timeout=aiohttp.ClientTimeout(total=self.load_timeout_s)) as response:
                await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("unloading %s from %s failed: %s", ref, replica.name, exc)
        self._publish(replica)
        log.info("unloaded %s from %s (%s)", ref, replica.name, why)

    def forget(self, replica: Replica, ref: str) -> None:
        """The engine says it does not hold `ref` (restarted, or another gateway unloaded it)."""
        replica.resident.pop(ref, None)
        self._publish(replica)

    def _publish(self, replica: Replica) -> None:
        self.metrics.replica_up.labels(replica=replica.name).set(1 if replica.healthy else 0)
        self.metrics.replicas_up.set(sum(r.healthy for r in self.replicas.values()))
        self.metrics.adapters_resident.labels(replica=replica.name).set(len(replica.resident))
