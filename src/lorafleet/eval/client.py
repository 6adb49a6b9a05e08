"""Sending eval conversations to an OpenAI-compatible endpoint: concurrent, greedy, every outcome kept.

Thin I/O over httpx. Each request either returns an answer or becomes a failure with its kind
(timeout, connection error, HTTP error, unreadable response) and message; nothing is retried and
nothing is dropped, so the scorecard counts every line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from lorafleet.eval.report import Status

ANSWER_CHARS = 2_000  # answers are kept in the report for examples and error analysis, not in full
ADAPTER_HEADER = "x-lorafleet-adapter"  # the lorafleet gateway names the version (or base model) that answered


@dataclass(frozen=True)
class RequestSettings:
    """How every request of a run is sent."""

    endpoint: str
    api_key: str | None = None
    temperature: float = 0.0
    max_tokens: int = 160
    timeout_s: float = 120.0
    concurrency: int = 8


@dataclass(frozen=True)
class Outcome:
    """What came back for one request."""

    status: Status
    answer: str | None = None
    http_status: int | None = None
    error: str | None = None
    latency_s: float | None = None
    completion_tokens: int | None = None
    adapter: str | None = None  # the gateway's ADAPTER_HEADER; None from servers that do not send it


def chat_completions_url(endpoint: str) -> str:
    """The chat completions URL of an endpoint given as `http://host:port` or as an OpenAI base URL ending in /v1."""
    base = endpoint.strip().rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"


def request_body(model: str, messages: list[dict[str, str]], settings: RequestSettings) -> dict[str, Any]:
    """The JSON body of one chat completion request: greedy unless the run says otherwise."""
    return {
        "model": model, "messages": messages, "temperature": settings.temperature,
        "max_tokens": settings.max_tokens, "stream": False,
    }


def read_response(response: httpx.Response, latency_s: float) -> Outcome:
    """An Outcome from an HTTP response: the answer of a 2xx with a chat completion body, else a failure."""
    adapter = response.headers.get(ADAPTER_HEADER)
    if response.status_code >= 300:
        return Outcome("http_error", http_status=response.status_code, latency_s=latency_s, adapter=adapter,
                       error=f"HTTP {response.status_code}: {_error_message(response)}")
    try:
        body = response.json()
        content = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return Outcome("bad_response", http_status=response.status_code, latency_s=latency_s, adapter=adapter,
                       error=f"not a chat completion: {response.text[:200]!r}")
    usage = body.get("usage") or {}
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return Outcome("ok", answer=(content or "")[:ANSWER_CHARS], http_status=response.status_code, latency_s=latency_s,
                   completion_tokens=tokens if isinstance(tokens, int) else None, adapter=adapter)


async def send(client: httpx.AsyncClient, url: str, body: dict[str, Any], timeout_s: float) -> Outcome:
    """POST one request; the whole exchange must finish within `timeout_s`. Never raises for network trouble."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            response = await client.post(url, json=body)
    except TimeoutError:
        return Outcome("timeout", error=f"no complete answer within {timeout_s:g} s")
    except httpx.TimeoutException as exc:
        return Outcome("timeout", error=f"{type(exc).__name__}: {exc}")
    except httpx.HTTPError as exc:
        return Outcome("connection_error", error=f"{type(exc).__name__}: {exc}")
    return read_response(response, time.perf_counter() - start)


async def send_all(
    model: str,
    conversations: list[list[dict[str, str]]],
    settings: RequestSettings,
    on_outcome: Callable[[], None] | None = None,
) -> tuple[list[Outcome], float]:
    """Send every conversation to `model`, at most `settings.concurrency` at a time.

    Returns the outcomes in the order of `conversations` and the wall time from first send to last answer.
    """
    url = chat_completions_url(settings.endpoint)
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
    gate = asyncio.Semaphore(settings.concurrency)

    async def one(messages: list[dict[str, str]]) -> Outcome:
        async with gate:
            outcome = await send(client, url, request_body(model, messages, settings), settings.timeout_s)
        if on_outcome is not None:
            on_outcome()
        return outcome

    # httpx's own timeouts stay off: `send` enforces one deadline for the whole exchange.
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=None) as client:
        start = time.perf_counter()
        outcomes = await asyncio.gather(*(one(m) for m in conversations))
        return list(outcomes), time.perf_counter() - start


def _error_message(response: httpx.Response) -> str:
    """The message of an OpenAI-shaped error body (or a top-level `message`), else the start of the body."""
    try:
        body = response.json()
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error or body.get("message")
        if message:
            return str(message)[:300]
    except (ValueError, AttributeError):
        pass
    return response.text[:300] or response.reason_phrase
