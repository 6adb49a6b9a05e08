"""One request through the gateway:

    key (auth dependency) → draining? → read + clamp the body → resolve (alias → version, if the key may
    see it) → fleet capacity → the key's limits → rank replicas (skipping open breakers) → ensure loaded
    (or fall back) → forward → record

A request that fails on a replica before its first byte was sent to the client (connection refused,
5xx, no first token in time) is retried once on the next replica in rendezvous order; after the first
byte the stream is what it is, and an error event ends it. A client that leaves before its answer
cancels the engine request (the connection to the engine is closed, which vLLM takes as an abort).
"""

from __future__ import annotations

import itertools
import logging
import random
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from fastapi import Request
from fastapi.responses import Response

from lorafleet.registry.fleet import FleetView
from lorafleet.serve.auth import AuthState, Principal, may_use, visible_models
from lorafleet.serve.breaker import Breakers
from lorafleet.serve.clamps import RequestLimits, check_max_tokens, check_request, parse_request
from lorafleet.serve.client import ClientGone, read_body, unless_client_leaves
from lorafleet.serve.config import FleetConfig, timeouts_for
from lorafleet.serve.errors import GatewayError, draining, engine_unavailable, model_not_found
from lorafleet.serve.limits import apply_adapter_limit, needs_check
from lorafleet.serve.metrics import UNKNOWN_ALIAS, GatewayMetrics
from lorafleet.serve.quotas import Quotas, fleet_full, overloaded
from lorafleet.serve.replicas import Replica, ReplicaPool
from lorafleet.serve.requestlog import RequestLog, RequestRecord
from lorafleet.serve.routing import Target, fallback_messages, rank_replicas, resolve
from lorafleet.serve.upstream import AdapterGone, RetryElsewhere, forward, unreachable

log = logging.getLogger("lorafleet.serve.gateway")
Endpoint = Literal["chat.completions", "completions"]
PATHS: dict[Endpoint, str] = {"chat.completions": "/v1/chat/completions", "completions": "/v1/completions"}
ATTEMPTS = 2  # the first replica, then one retry on another
CLIENT_CLOSED = 499  # nginx's status for a request whose client left before the answer


@dataclass
class GatewayState:
    """Everything a request needs; one per app, no module-level state."""

    config: FleetConfig
    pool: ReplicaPool
    metrics: GatewayMetrics
    request_log: RequestLog
    base_name: str
    fleet: FleetView
    auth: AuthState
    breakers: Breakers
    quotas: Quotas = field(default_factory=Quotas)
    admitted: dict[str, Principal] = field(default_factory=dict)  # request id → its key, until the request ends
    fleet_read_ok: bool = False
    draining: bool = False  # after the first SIGTERM: not ready, new requests get 503
    rng: random.Random = field(default_factory=random.Random)
    id_prefix: str = field(default_factory=lambda: secrets.token_hex(4))  # this gateway process
    ids: Iterator[int] = field(default_factory=itertools.count)

    def next_request_id(self) -> str:
        return f"{self.id_prefix}-{next(self.ids):x}"


async def handle(state: GatewayState, request: Request, endpoint: Endpoint, principal: Principal, arrived_draining: bool = False) -> Response:
    """Answer one completion request for `principal` (see the module docstring); every outcome is recorded.
    `arrived_draining`: the request came after SIGTERM (it is refused; one that came before is served)."""
    started = time.perf_counter()
    record, headers = open_record(state, endpoint, principal.tenant)
    try:
        if arrived_draining:
            raise draining()
        limits = state.config.limits
        body = parse_body(await read_body(request, limits.max_body_bytes), endpoint, limits)
        record.stream = bool(body.get("stream"))
        if state.config.log_prompts:
            record.prompt = body.get("messages", body.get("prompt"))
        sticky = request.headers.get("x-session-id") or (body["user"] if isinstance(body.get("user"), str) else None)
        # an alias the key may not use answers exactly like one that does not exist: names do not leak
        visible = may_use(principal, body["model"], state.fleet, state.base_name)
        target = route(state, body["model"], record, sticky, visible, lambda: visible_models(principal, state.fleet, state.base_name))
        check_max_tokens(body, _context(state, target), body["model"])
        healthy = len(state.pool.healthy_names())
        if healthy and fleet_full(state.quotas.total_in_flight, state.config.max_inflight_per_replica, healthy):
            raise overloaded()
        state.quotas.start(principal, time.monotonic())
        state.admitted[record.request_id] = principal
        if target.canary:
            state.metrics.canary_picks.labels(alias=target.alias, version=target.key).inc()
        return await unless_client_leaves(request, dispatch(state, target, body, endpoint, record, started, headers))
    except GatewayError as error:
        record.status, record.error = error.status, error.message
        finish(state, record, started)
        return error.response(headers)
    except ClientGone:
        record.status, record.error = CLIENT_CLOSED, "the client disconnected before its answer started"
        finish(state, record, started)
        return Response(status_code=CLIENT_CLOSED)
    except Exception:  # a bug of ours: logged with its traceback, answered without it
        log.exception("request %s failed inside the gateway", record.request_id)
        error = GatewayError(500, f"The gateway failed on request {record.request_id}; see its log.", "server_error")
        record.status, record.error = 500, error.message
        finish(state, record, started)
        return error.response(headers)


def open_record(state: GatewayState, endpoint: Endpoint, tenant: str | None, stream: bool = False) -> tuple[RequestRecord, dict[str, str]]:
    """A new request's log record (alias unknown until it resolves) and the headers every answer to it carries."""
    record = RequestRecord(time=datetime.now(timezone.utc).isoformat(), request_id=state.next_request_id(),
                           endpoint=endpoint, alias=UNKNOWN_ALIAS, stream=stream, tenant=tenant)
    return record, {"x-request-id": record.request_id}


def route(state: GatewayState, model: str, record: RequestRecord, sticky: str | None, visible: bool,
          known: Callable[[], list[str]]) -> Target:
    """`model` → its target, noted on `record`; a name the caller may not use (`visible` False) or that the fleet
    does not serve raises model_not_found listing `known()`."""
    target = resolve(model, state.fleet, state.base_name, sticky, state.rng) if visible else None
    if target is None:
        raise model_not_found(model, known())
    record.alias, record.canary, record.version = target.alias, target.canary, target.key
    return target


def parse_body(raw: bytes, endpoint: Endpoint, limits: RequestLimits | None = None) -> dict:
    """The request JSON within every clamp (serve.clamps); the engine validates the rest."""
    limits = limits or RequestLimits()
    body = parse_request(raw, limits)
    check_request(body, endpoint, limits)
    return body


def _context(state: GatewayState, target: Target) -> int | None:
    """The most tokens the target can ever hold: its adapter's training length, else the engines' context."""
    if target.version is not None and target.version.max_seq_length:
        return target.version.max_seq_length
    lengths = [r.max_model_len for r in state.pool.replicas.values() if r.healthy and r.max_model_len]
    return min(lengths) if lengths else None


async def dispatch(state: GatewayState, target: Target, body: dict, endpoint: Endpoint, record: RequestRecord,
                   started: float, headers: dict[str, str]) -> Response:
    """Try replicas in rendezvous order, skipping open breakers, at most ATTEMPTS of them."""
    ranking = rank_replicas(target.key, state.pool.healthy_names())
    if not ranking:
        raise engine_unavailable("no replica is healthy")
    breakers, key = state.breakers, target.key
    last: GatewayError | None = None
    attempts = 0
    for name in ranking:
        replica = state.pool.replicas[name]
        if attempts == ATTEMPTS:
            break
        if not replica.healthy or not breakers.acquire(name, key, time.monotonic()):
            continue
        attempts += 1
        try:
            response = await _on_replica(state, replica, target, body, endpoint, record, started, headers)
        except RetryElsewhere as failed:
            last = failed.error
            if failed.replica_down:
                state.pool.mark_down(replica, str(failed))
            if breakers.record(name, key, False, time.monotonic()):
                log.warning("circuit open for %s on %s: %s", key, name, failed)
            log.info("request %s failed on %s before its first byte (%s)", record.request_id, name, failed)
            record.retries += 1
            continue
        except BaseException:
            breakers.release(name, key)
            raise
        breakers.record(name, key, True, time.monotonic())
        return response
    if last is not None:
        raise last
    wait = min((breakers.wait_s(n, key, time.monotonic()) for n in ranking), default=1.0)
    error = engine_unavailable(f"every replica for {target.alias} is cooling down after failures")
    error.retry_after = max(1, round(wait))
    raise error


async def _on_replica(state: GatewayState, replica: Replica, target: Target, body: dict, endpoint: Endpoint,
                      record: RequestRecord, started: float, headers: dict[str, str]) -> Response:
    for reload_attempt in (0, 1):
        upstream = await prepare(state, replica, target, body, record)
        try:
            return await send(state, replica, target, endpoint, upstream, body, record, started, headers)
        except AdapterGone:
            state.pool.forget(replica, target.key)
            if reload_attempt:
                raise engine_unavailable(f"{target.key} could not be kept loaded") from None
    raise AssertionError("unreachable")


async def prepare(state: GatewayState, replica: Replica, target: Target, body: dict, record: RequestRecord) -> dict:
    """The body the engine gets: the version's loaded name, or the base model (and fallback prompt) when it cannot load."""
    record.replica, record.fallback, record.fallback_reason = replica.name, False, None
    base_id = replica.base_model_id or state.base_name
    if target.version is None:
        return {**body, "model": base_id}
    loaded = await state.pool.ensure_loaded(replica, target.version)
    if loaded.ok:
        upstream = {**body, "model": target.version.ref}
        if needs_check(target.version, replica):
            upstream = await apply_adapter_limit(state.pool.client, replica, target.version, upstream)
        return upstream
    if loaded.reason == "engine_down":  # the replica, not the adapter, failed: another replica can load it
        raise unreachable("the adapter load could not reach the engine")
    record.fallback, record.fallback_reason = True, loaded.reason
    upstream = {**body, "model": base_id}
    if isinstance(body.get("messages"), list):
        upstream["messages"] = fallback_messages(body["messages"], target.fallback_prompt)
    return upstream


async def send(state: GatewayState, replica: Replica, target: Target, endpoint: Endpoint, upstream: dict, body: dict,
               record: RequestRecord, started: float, headers: dict[str, str]) -> Response:
    """Forward `upstream` to `replica` (serve.upstream), holding the adapter busy while it runs."""
    on_adapter = target.version is not None and not record.fallback
    headers = {**headers, "x-lorafleet-adapter": target.key if on_adapter else state.base_name}
    if record.fallback:
        headers["x-lorafleet-fallback"] = "base"
    stream = bool(body.get("stream"))
    client_wants_usage = stream and isinstance(body.get("stream_options"), dict) and bool(body["stream_options"].get("include_usage"))
    if stream:  # always ask for usage (tokens are measured); a client that did not ask never sees it
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        upstream = {**upstream, "stream_options": {**options, "include_usage": True}}
    busy_key = upstream["model"]
    replica.busy[busy_key] += 1
    held = [True]

    def release() -> None:
        if held[0]:
            held[0] = False
            replica.busy[busy_key] -= 1

    streaming = False
    try:
        response = await forward(state.pool.client, replica, f"{replica.url}{PATHS[endpoint]}", upstream, stream, client_wants_usage,
                                 timeouts_for(state.config, target.alias), record, started, headers, on_adapter,
                                 lambda r: finish(state, r, started), release)
        streaming = stream
        return response
    finally:
        if not streaming:  # an open stream releases the adapter when it ends
            release()


def finish(state: GatewayState, record: RequestRecord, started: float) -> None:
    """Metrics, the key's token usage and the request log line for a finished request."""
    record.latency_s = round(time.perf_counter() - started, 6)
    if record.ttft_s is not None:
        record.ttft_s = round(record.ttft_s, 6)
    principal = state.admitted.pop(record.request_id, None)
    if principal is not None:
        state.quotas.end(principal, (record.prompt_tokens or 0) + (record.completion_tokens or 0), time.monotonic())
    alias, version = record.alias, record.version or "none"
    m = state.metrics
    m.requests.labels(alias=alias, version=version, status=str(record.status)).inc()
    if record.fallback:
        m.fallbacks.labels(alias=alias, version=version, reason=record.fallback_reason or "unknown").inc()
    if record.status < 400:
        m.latency.labels(alias=alias, version=version).observe(record.latency_s)
        if record.ttft_s is not None:
            m.ttft.labels(alias=alias, version=version).observe(record.ttft_s)
        if record.prompt_tokens:
            m.prompt_tokens.labels(alias=alias, version=version).inc(record.prompt_tokens)
        if record.completion_tokens:
            m.completion_tokens.labels(alias=alias, version=version).inc(record.completion_tokens)
    state.request_log.write(record)
