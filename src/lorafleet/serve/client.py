"""The client's side of a request: its body, read within a size limit, and its disconnection, which cancels the work.

Cancelling the work closes its connection to the engine, which vLLM takes as an abort: a client that leaves
stops the generation it asked for.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from lorafleet.serve.clamps import body_too_large
from lorafleet.serve.races import Interrupted, unless


class ClientGone(Exception):
    """The client disconnected before its answer started."""


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` bytes (never read whole into memory first)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def unless_client_leaves(request: Request, work: Coroutine[Any, Any, Response]) -> Response:
    """Run `work`, cancelling it (and so closing its engine connection) if the client disconnects first."""
    try:
        return await unless(work, _disconnected(request))
    except Interrupted:
        raise ClientGone() from None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
