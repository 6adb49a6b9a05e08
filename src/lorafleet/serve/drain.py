"""Graceful shutdown: the first SIGTERM (or Ctrl-C) drains, the second stops at once.

Draining: `/health/ready` turns false (a load balancer stops sending), new requests get 503 with
Retry-After, requests in flight finish — for at most `drain_timeout_s` — and then uvicorn's own
shutdown runs the app's, which stops the replicas. A second signal skips all that: the replicas'
process groups are killed and the process exits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from lorafleet.serve.proxy import GatewayState

log = logging.getLogger("lorafleet.serve.drain")


def drain_over(in_flight: int, now: float, deadline: float) -> bool:
    """The drain ends when nothing is in flight, or at its deadline."""
    return in_flight <= 0 or now >= deadline


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain between the first exit signal and shutdown.

    `gateway` gives the app's state (None before start-up finished: then the signal just exits);
    `kill_now` stops the replicas without waiting (the second signal).
    """

    def __init__(self, config: uvicorn.Config, gateway: Callable[[], GatewayState | None], drain_timeout_s: float,
                 kill_now: Callable[[], None]):
        super().__init__(config)
        self.gateway, self.drain_timeout_s, self.kill_now = gateway, drain_timeout_s, kill_now
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = self.gateway()
        if self.drain_deadline is None and state is not None and not self.should_exit:
            self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does: the exit status says which signal
            self.drain_deadline = time.monotonic() + self.drain_timeout_s
            state.draining = True
            log.info("draining: %d request(s) in flight, up to %.0f s; a second signal stops at once",
                     state.quotas.total_in_flight, self.drain_timeout_s)
            return
        if self.drain_deadline is not None:
            log.warning("second signal: stopping now")
            self.kill_now()
            self.force_exit = True
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        state = self.gateway()
        if self.drain_deadline is not None and not self.should_exit and state is not None:
            if drain_over(state.quotas.total_in_flight, time.monotonic(), self.drain_deadline):
                left = state.quotas.total_in_flight
                if left > 0:
                    log.warning("drain timeout: %d request(s) still in flight are cut off", left)
                else:
                    log.info("drained: no request in flight")
                self.should_exit = True
        return await super().on_tick(counter)
