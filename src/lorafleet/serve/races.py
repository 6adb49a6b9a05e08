"""One race the gateway runs in two places: a request's work against an event that makes it pointless
(the client left, the replica failed its health check)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Interrupted(Exception):
    """The stop event came first: the work was cancelled, and awaited so that its connection is closed."""


async def unless(work: Coroutine[Any, Any, T], stop: Coroutine[Any, Any, Any]) -> T:
    """`work`'s result, unless `stop` finishes first; then the work is cancelled and Interrupted raised.
    A cancellation of the caller (the server stopping the request) cancels the work with it."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(stop)
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # whatever it was doing, nobody is waiting for its answer now
        pass
    raise Interrupted()
