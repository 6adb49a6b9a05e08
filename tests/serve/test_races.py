"""The gateway's race of a request's work against a stop event (client gone, replica down)."""

from __future__ import annotations

import asyncio

import pytest

from lorafleet.serve.races import Interrupted, unless


async def _after(seconds: float, value: object = None) -> object:
    await asyncio.sleep(seconds)
    return value


@pytest.mark.parametrize(
    ("work_s", "stop_s", "outcome"),
    [
        (0.0, 1.0, "answer"),      # the work finishes first: its answer
        (1.0, 0.0, Interrupted),   # the stop event first: the work is abandoned
        (0.01, 0.2, "answer"),
    ],
)
def test_the_first_to_finish_decides(work_s: float, stop_s: float, outcome: object) -> None:
    async def race() -> object:
        return await unless(_after(work_s, "answer"), _after(stop_s))

    if outcome is Interrupted:
        with pytest.raises(Interrupted):
            asyncio.run(race())
    else:
        assert asyncio.run(race()) == outcome


async def _slow_work(seen: list[str], error_on_cancel: bool) -> None:
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        seen.append("cancelled")
        if error_on_cancel:
            raise RuntimeError("a connection error while closing: nobody waits for it") from None
        raise


def test_abandoned_work_is_cancelled_and_its_error_is_not_raised() -> None:
    seen: list[str] = []
    with pytest.raises(Interrupted):
        asyncio.run(unless(_slow_work(seen, error_on_cancel=True), _after(0.01)))
    assert seen == ["cancelled"]


def test_a_cancelled_caller_cancels_the_work() -> None:
    seen: list[str] = []

    async def caller() -> None:
        racing = asyncio.ensure_future(unless(_slow_work(seen, error_on_cancel=False), _after(10)))
        await asyncio.sleep(0.01)
        racing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await racing
        await asyncio.sleep(0)  # let the work see its cancellation

    asyncio.run(caller())
    assert seen == ["cancelled"]


def test_a_failing_work_raises_its_own_error() -> None:
    async def work() -> None:
        raise ValueError("engine answered garbage")

    with pytest.raises(ValueError, match="garbage"):
        asyncio.run(unless(work(), _after(1)))
