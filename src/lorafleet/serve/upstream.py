"""Sending one prepared request to one replica and relaying its answer, under the alias's timeouts.

`forward` raises `RetryElsewhere` for every failure that happened before the client got a byte and
that another replica may not share: the connection failed (the replica is marked down), the engine
answered 5xx, or a stream's first event did not come within `first_token_s`. The caller retries once
on another replica. A 4xx from the engine is the client's and is answered as is; an unstreamed
answer that overruns `total_s` is a 504 (the engine did the work; it is not sent twice). A request waiting on
a replica that fails its health check meanwhile (a stalled engine) is abandoned and retried likewise.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
from fastapi.responses import Response

from lorafleet.serve.config import Timeouts
from lorafleet.serve.errors import GatewayError, from_engine
from lorafleet.serve.races import Interrupted, unless
from lorafleet.serve.replicas import Replica
from lorafleet.serve.requestlog import RequestRecord
from lorafleet.serve.streaming import CLIENT_LEFT, EmptyStream, StreamRelay

# Failures that mean the replica is gone, not that the request was bad. (aiohttp's timeouts are
# ClientConnectionErrors too; each call site catches asyncio.TimeoutError first.)
REPLICA_GONE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
Finish = Callable[[RequestRecord], None]
T = TypeVar("T")


class RetryElsewhere(Exception):
    """The replica failed before the answer's first byte; `error` is what the client gets if no retry is left."""

    def __init__(self, reason: str, error: GatewayError, replica_down: bool = False):
        super().__init__(reason)
        self.error, self.replica_down = error, replica_down


class AdapterGone(Exception):
    """The engine no longer holds the adapter the gateway thought it held (restart, other gateway)."""


def engine_timeout(what: str = "The engine did not answer in time.") -> GatewayError:
    return GatewayError(504, what, "timeout", code="engine_timeout")


def unreachable(detail: str) -> RetryElsewhere:
    return RetryElsewhere(detail, GatewayError(503, f"No engine replica could answer: {detail}. Retry later.", "service_unavailable",
                                               code="engine_unavailable", retry_after=2), replica_down=True)


async def forward(client: aiohttp.ClientSession, replica: Replica, url: str, upstream: dict, stream: bool, client_wants_usage: bool,
                  timeouts: Timeouts, record: RequestRecord, started: float, headers: dict[str, str],
                  on_adapter: bool, finish: Finish, on_stream_end: Callable[[], None]) -> Response:
    """POST `upstream` to `url` and relay the answer (see the module docstring)."""
    timeout = aiohttp.ClientTimeout(total=timeouts.total_s, connect=timeouts.connect_s)
    first_token = asyncio.timeout(timeouts.first_token_s if stream else None)
    try:
        async with first_token:
            response, content = await unless_down(replica, _exchange(client, url, upstream, replica, timeout, stream))
            if response.status != 200:
                if response.status == 404 and on_adapter and b"does not exist" in content:
                    raise AdapterGone()
                error = from_engine(response.status, content)
                if response.status >= 500:
                    raise RetryElsewhere(f"HTTP {response.status}", error)
                raise error
            if not stream:
                record_usage(record, _usage_of(content))
                finish(record)
                return Response(content=content, media_type="application/json", headers=headers)
            relay = StreamRelay(response, client_wants_usage, timeouts.idle_s)
            first = await relay.first_event()
    except aiohttp.ConnectionTimeoutError:
        raise unreachable(f"no connection within {timeouts.connect_s:g} s") from None
    except TimeoutError:
        if first_token.expired():
            raise RetryElsewhere(f"no first token within {timeouts.first_token_s:g} s",
                                 engine_timeout(f"The engine sent no first token within {timeouts.first_token_s:g} s.")) from None
        raise engine_timeout(f"The engine did not answer within {timeouts.total_s:g} s.") from None
    except EmptyStream:
        raise unreachable("the stream closed before its first event") from None
    except REPLICA_GONE as exc:
        raise unreachable(f"{type(exc).__name__} before the first byte") from None
    record.ttft_s = time.perf_counter() - started

    def end(usage: dict | None, error: str | None) -> None:
        on_stream_end()
        record_usage(record, usage)
        if error:
            record.status, record.error = (499 if error == CLIENT_LEFT else 502), error
        finish(record)

    return relay.streaming_response(first, headers, on_end=end)


async def _exchange(client: aiohttp.ClientSession, url: str, upstream: dict, replica: Replica, timeout: aiohttp.ClientTimeout,
                    stream: bool) -> tuple[aiohttp.ClientResponse, bytes]:
    """Send the request; read the whole answer unless it is a stream that started (its body is relayed)."""
    response = await client.post(url, data=json.dumps(upstream), headers=replica.post_headers, timeout=timeout)
    if stream and response.status == 200:
        return response, b""
    return response, await _read_and_close(response)


async def unless_down(replica: Replica, work: Coroutine[Any, Any, T]) -> T:
    """`work`, abandoned when the replica fails its health check meanwhile (a stalled engine never answers; the
    request has sent the client nothing yet, so it goes to another replica)."""
    try:
        return await unless(work, replica.down.wait())
    except Interrupted:
        raise unreachable("the replica failed its health check while the request waited") from None


async def _read_and_close(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    finally:
        response.release()


def _usage_of(content: bytes) -> dict | None:
    try:
        usage = json.loads(content).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def record_usage(record: RequestRecord, usage: dict | None) -> None:
    if usage:
        record.prompt_tokens, record.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
