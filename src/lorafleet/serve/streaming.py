"""Relaying an engine's server-sent events to the client, one whole event at a time.

The relay reads the usage the engine reports in its last chunk (the gateway always asks for it, to
count tokens) and drops that chunk when the client did not ask for usage itself, so what the client
sees is what it would have seen from the engine directly. If the engine fails mid-stream, the
client gets an OpenAI-shaped error event instead of `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import aiohttp
from fastapi.responses import StreamingResponse

from lorafleet.serve.errors import error_body

EndHook = Callable[[dict | None, str | None], None]  # (usage, error) when the stream ends, however it ends


class EmptyStream(Exception):
    """The engine closed the stream before its first event."""


class StreamRelay:
    """Wraps an engine's streaming response (status 200, body not yet read)."""

    def __init__(self, response: aiohttp.ClientResponse, client_wants_usage: bool, idle_s: float | None = None):
        self.upstream = response
        self.client_wants_usage = client_wants_usage
        self.idle_s = idle_s  # longest wait for the next event once streaming
        self.usage: dict | None = None
        self._events = sse_events(response.content.iter_any())

    async def first_event(self) -> bytes:
        """The first event to send; raises the transport error, or EmptyStream."""
        try:
            while True:
                event = await self._events.__anext__()
                if self._keep(event):
                    return event
        except StopAsyncIteration:
            self.upstream.release()
            raise EmptyStream() from None
        except BaseException:
            self.upstream.close()
            raise

    def streaming_response(self, first: bytes, headers: dict[str, str], on_end: EndHook) -> StreamingResponse:
        self.ended = False
        return RelayResponse(self, on_end, self._relay(first, on_end), media_type="text/event-stream", headers=headers)

    def abandon(self, on_end: EndHook) -> None:
        """The response was dropped before its first chunk (the client left just then): end it here instead."""
        if not self.ended:
            self.ended = True
            self.upstream.close()
            on_end(self.usage, "the client left before the stream started")

    async def _relay(self, first: bytes, on_end: EndHook) -> AsyncIterator[bytes]:
        error: str | None = None
        self.ended = True  # from here the finally below ends the stream
        try:
            yield first
            while True:
                try:
                    event = await asyncio.wait_for(self._events.__anext__(), self.idle_s)
                except StopAsyncIteration:
                    break
                if self._keep(event):
                    yield event
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            error = f"the engine failed mid-stream ({type(exc).__name__})"
            payload = error_body(f"The engine failed while streaming the answer: {type(exc).__name__}.", "engine_error", code="engine_error")
            yield f"data: {json.dumps(payload)}\n\n".encode()
        finally:
            self.upstream.close()  # a no-op after a complete read; drops the connection if the client left early
            on_end(self.usage, error)

    def _keep(self, event: bytes) -> bool:
        """Record usage from the event; False for the usage-only chunk the client did not ask for."""
        if b'"usage"' not in event or b'"usage":null' in event:
            return True
        try:
            chunk = json.loads(event.removeprefix(b"data: "))
        except ValueError:
            return True
        usage = chunk.get("usage") if isinstance(chunk, dict) else None
        if isinstance(usage, dict):
            self.usage = usage
            return self.client_wants_usage or bool(chunk.get("choices"))
        return True


class RelayResponse(StreamingResponse):
    """A StreamingResponse that ends its relay even when it is cancelled before iterating the body (a body
    generator that never started never runs its `finally`): the engine request and its bookkeeping are released."""

    def __init__(self, relay: StreamRelay, on_end: EndHook, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.relay, self.on_end = relay, on_end

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.relay.abandon(self.on_end)


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Re-cut a byte stream into whole server-sent events, each ending in a blank line."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        while (end := buffer.find(b"\n\n")) >= 0:
            yield buffer[: end + 2]
            buffer = buffer[end + 2 :]
    if buffer.strip():
        yield buffer if buffer.endswith(b"\n\n") else buffer + b"\n\n"
