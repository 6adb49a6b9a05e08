"""One request through the gateway:

    authenticate → parse → resolve (alias → version) → rank replicas → ensure loaded (or fall back)
    → forward → record

A request that fails on a replica before its first byte was sent to the client (connection refused,
engine died mid-prefill) is retried on the next replica in rendezvous order; after the first byte
the stream is what it is, and an error event ends it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

import aiohttp
from fastapi import Request
from fastapi.responses import Response

from lorafleet.registry.fleet import FleetView
from lorafleet.serve.auth import AuthState, Principal, may_use, visible_models
from lorafleet.serve.config import FleetConfig
from lorafleet.serve.errors import (
    GatewayError, bad_request, engine_unavailable, from_engine, model_not_found,
)
from lorafleet.serve.limits import apply_adapter_limit, needs_check
from lorafleet.serve.metrics import UNKNOWN_ALIAS, GatewayMetrics
from lorafleet.serve.replicas import Replica, ReplicaPool
from lorafleet.serve.requestlog import RequestLog, RequestRecord
from lorafleet.serve.routing import Target, fallback_messages, rank_replicas, resolve
from lorafleet.serve.streaming import EmptyStream, StreamRelay

log = logging.getLogger("lorafleet.serve.gateway")
Endpoint = Literal["chat.completions", "completions"]
PATHS: dict[Endpoint, str] = {"chat.completions": "/v1/chat/completions", "completions": "/v1/completions"}
# Failures that mean the replica is gone, not that the request was bad: retry elsewhere. (aiohttp's read
# timeout is also a ClientConnectionError; it is caught as asyncio.TimeoutError first.)
REPLICA_GONE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)


class ReplicaGone(Exception):
    """The replica failed before the answer's first byte; the request can go to another one."""


class AdapterGone(Exception):
    """The engine no longer holds the adapter the gateway thought it held (restart, other gateway)."""


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
    fleet_read_ok: bool = False
    draining: bool = False  # after the first SIGTERM: not ready, new requests get 503
    rng: random.Random = field(default_factory=random.Random)
    id_prefix: str = field(default_factory=lambda: secrets.token_hex(4))  # this gateway process
    ids: Iterator[int] = field(default_factory=itertools.count)

    def next_request_id(self) -> str:
        return f"{self.id_prefix}-{next(self.ids):x}"


async def handle(state: GatewayState, request: Request, endpoint: Endpoint, principal: Principal) -> Response:
    """Answer one completion request for `principal` (see the module docstring); every outcome is recorded."""
    started = time.perf_counter()
    record = RequestRecord(time=datetime.now(timezone.utc).isoformat(), request_id=state.next_request_id(),
                           endpoint=endpoint, alias=UNKNOWN_ALIAS)
    headers = {"x-request-id": record.request_id}
    try:
        body = parse_body(await request.body(), endpoint)
        record.stream = bool(body.get("stream"))
        if state.config.log_prompts:
            record.prompt = body.get("messages", body.get("prompt"))
        sticky = request.headers.get("x-session-id") or (body["user"] if isinstance(body.get("user"), str) else None)
        # an alias the key may not use answers exactly like one that does not exist: names do not leak
        visible = may_use(principal, body["model"], state.fleet, state.base_name)
        target = resolve(body["model"], state.fleet, state.base_name, sticky, state.rng) if visible else None
        if target is None:
            raise model_not_found(body["model"], visible_models(principal, state.fleet, state.base_name))
        record.alias, record.canary = target.alias, target.canary
        record.version = target.key
        if target.canary:
            state.metrics.canary_picks.labels(alias=target.alias, version=target.key).inc()
        return await dispatch(state, target, body, endpoint, record, started, headers)
    except GatewayError as error:
        record.status, record.error = error.status, error.message
        finish(state, record, started)
        return error.response(headers)
    except Exception:  # a bug of ours: logged with its traceback, answered without it
        log.exception("request %s failed inside the gateway", record.request_id)
        error = GatewayError(500, f"The gateway failed on request {record.request_id}; see its log.", "server_error")
        record.status, record.error = 500, error.message
        finish(state, record, started)
        return error.response(headers)


def parse_body(raw: bytes, endpoint: Endpoint) -> dict:
    """The request JSON, checked only as far as routing needs; the engine validates every other parameter."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request(f"The request body must be a JSON object, not {type(body).__name__}.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_request("'model' is required: an alias, a NAME@vN version or the base model's name.", "model")
    if endpoint == "chat.completions" and (not isinstance(body.get("messages"), list) or not body["messages"]):
        raise bad_request("'messages' must be a non-empty list of {role, content} objects.", "messages")
    if endpoint == "completions" and not isinstance(body.get("prompt"), (str, list)):
        raise bad_request("'prompt' is required: a string or a list of strings or token ids.", "prompt")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise bad_request("'stream' must be true or false.", "stream")
    return body


async def dispatch(state: GatewayState, target: Target, body: dict, endpoint: Endpoint, record: RequestRecord,
                   started: float, headers: dict[str, str]) -> Response:
    """Try replicas in rendezvous order until one answers (or fails after its first byte)."""
    ranking = rank_replicas(target.key, state.pool.healthy_names())
    if not ranking:
        raise engine_unavailable("no replica is healthy")
    for name in ranking:
        replica = state.pool.replicas[name]
        if not replica.healthy:  # went down while an earlier attempt ran
            continue
        for reload_attempt in (0, 1):
            try:
                upstream = await prepare(state, replica, target, body, record)
                return await forward(state, replica, target, endpoint, upstream, body, record, started, headers)
            except AdapterGone:
                state.pool.forget(replica, target.key)
                if reload_attempt:
                    raise engine_unavailable(f"{target.key} could not be kept loaded") from None
            except ReplicaGone as gone:
                state.pool.mark_down(replica, str(gone))
                record.retries += 1
                break
    raise engine_unavailable("every healthy replica failed before answering")


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
        raise ReplicaGone("the adapter load could not reach the engine")
    record.fallback, record.fallback_reason = True, loaded.reason
    upstream = {**body, "model": base_id}
    if isinstance(body.get("messages"), list):
        upstream["messages"] = fallback_messages(body["messages"], target.fallback_prompt)
    return upstream


async def forward(state: GatewayState, replica: Replica, target: Target, endpoint: Endpoint, upstream: dict, body: dict,
                  record: RequestRecord, started: float, headers: dict[str, str]) -> Response:
    """Send `upstream` to `replica` and relay the answer. Raises ReplicaGone (retry elsewhere),
    AdapterGone (reload and retry) or GatewayError."""
    on_adapter = target.version is not None and not record.fallback
    headers = {**headers, "x-lorafleet-adapter": target.key if on_adapter else state.base_name}
    if record.fallback:
        headers["x-lorafleet-fallback"] = "base"
    url = f"{replica.url}{PATHS[endpoint]}"
    stream = bool(body.get("stream"))
    client_wants_usage = stream and isinstance(body.get("stream_options"), dict) and bool(body["stream_options"].get("include_usage"))
    if stream:  # always ask for usage (tokens are measured); a client that did not ask never sees it
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        upstream = {**upstream, "stream_options": {**options, "include_usage": True}}
    busy_key = upstream["model"]
    replica.busy[busy_key] += 1
    try:
        try:
            response = await state.pool.client.post(url, data=json.dumps(upstream), headers=replica.post_headers,
                                                    timeout=aiohttp.ClientTimeout(total=state.config.request_timeout_s, connect=5.0))
        except asyncio.TimeoutError:
            raise engine_timeout() from None
        except REPLICA_GONE as exc:
            raise ReplicaGone(f"{type(exc).__name__} on {endpoint}") from None
        if response.status != 200:
            content = await _read_and_close(response)
            if response.status == 404 and on_adapter and b"does not exist" in content:
                raise AdapterGone()
            raise from_engine(response.status, content)
        if not stream:
            content = await _read_and_close(response)
            _count_usage(record, _usage_of(content))
            record.ttft_s = None
            finish(state, record, started)
            return Response(content=content, media_type="application/json", headers=headers)
        relay = StreamRelay(response, client_wants_usage)
        try:
            first = await relay.first_event()
        except asyncio.TimeoutError:
            raise engine_timeout() from None
        except (*REPLICA_GONE, EmptyStream) as exc:
            raise ReplicaGone(f"{type(exc).__name__} before the first byte") from None
        record.ttft_s = time.perf_counter() - started
        replica.busy[busy_key] += 1  # the relay holds it now; released when the stream ends
        return relay.streaming_response(first, headers, on_end=lambda usage, error: _end_stream(state, replica, busy_key, record, started, usage, error))
    finally:
        replica.busy[busy_key] -= 1


def _end_stream(state: GatewayState, replica: Replica, busy_key: str, record: RequestRecord, started: float,
                usage: dict | None, error: str | None) -> None:
    replica.busy[busy_key] -= 1
    _count_usage(record, usage)
    if error:
        record.status, record.error = 502, error
    finish(state, record, started)


async def _read_and_close(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except asyncio.TimeoutError:
        raise engine_timeout() from None
    except REPLICA_GONE as exc:
        raise ReplicaGone(f"{type(exc).__name__} while reading the answer") from None
    finally:
        response.release()


def engine_timeout() -> GatewayError:
    return GatewayError(504, "The engine did not answer in time.", "timeout", code="engine_timeout")


def _usage_of(content: bytes) -> dict | None:
    try:
        usage = json.loads(content).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def _count_usage(record: RequestRecord, usage: dict | None) -> None:
    if usage:
        record.prompt_tokens, record.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")


def finish(state: GatewayState, record: RequestRecord, started: float) -> None:
    """Metrics and the request log line for a finished request."""
    record.latency_s = round(time.perf_counter() - started, 6)
    if record.ttft_s is not None:
        record.ttft_s = round(record.ttft_s, 6)
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
