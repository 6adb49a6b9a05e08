"""Per (replica, adapter) circuit breakers: a pair that failed `failures` times in a row is skipped for
`cooldown_s`, then one request probes it; its success closes the breaker, its failure opens it again.

A failure is the replica failing the request before its first byte (connection error, 5xx, first-token
timeout), not a client's bad request. Keyed by pair rather than replica, so one adapter that makes an
engine fail does not take the replica's other adapters out with it; a dead replica is taken out by
its health checks instead (serve.replicas).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Breaker:
    """One pair's state. `opened_at` is set while open (monotonic seconds); `probing` while its one probe runs."""

    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


CLOSED = Breaker()


def allows(breaker: Breaker, now: float, cooldown_s: float) -> tuple[bool, Breaker]:
    """Whether a request may go to the pair now, and the state after sending it (a probe marks `probing`)."""
    if breaker.opened_at is None:
        return True, breaker
    if breaker.probing or now - breaker.opened_at < cooldown_s:
        return False, breaker
    return True, replace(breaker, probing=True)


def after(breaker: Breaker, ok: bool, now: float, threshold: int) -> Breaker:
    """The state after a request to the pair succeeded (`ok`) or failed."""
    if ok:
        return CLOSED
    failures = breaker.failures + 1
    if breaker.opened_at is not None or failures >= threshold:  # a failed probe re-opens for a full cool-down
        return Breaker(failures, now, False)
    return Breaker(failures)


def retry_in(breaker: Breaker, now: float, cooldown_s: float) -> float:
    """Seconds until the pair may be probed (0 when it may be now)."""
    return 0.0 if breaker.opened_at is None else max(0.0, cooldown_s - (now - breaker.opened_at))


@dataclass
class Breakers:
    """The breakers of one gateway, keyed by (replica name, adapter key)."""

    threshold: int
    cooldown_s: float
    states: dict[tuple[str, str], Breaker] = field(default_factory=dict)

    def acquire(self, replica: str, key: str, now: float) -> bool:
        """True when a request may go to the pair (and, for a probe, reserves it)."""
        ok, state = allows(self.states.get((replica, key), CLOSED), now, self.cooldown_s)
        if state is not CLOSED:
            self.states[(replica, key)] = state
        return ok

    def record(self, replica: str, key: str, ok: bool, now: float) -> bool:
        """Record an outcome; True when this failure opened the breaker."""
        before = self.states.get((replica, key), CLOSED)
        state = after(before, ok, now, self.threshold)
        if state == CLOSED:
            self.states.pop((replica, key), None)
        else:
            self.states[(replica, key)] = state
        return before.opened_at is None and state.opened_at is not None

    def release(self, replica: str, key: str) -> None:
        """A probe that ended with no verdict (the client left, a client error): let the next request probe."""
        state = self.states.get((replica, key))
        if state is not None and state.probing:
            self.states[(replica, key)] = replace(state, probing=False)

    def wait_s(self, replica: str, key: str, now: float) -> float:
        return retry_in(self.states.get((replica, key), CLOSED), now, self.cooldown_s)

    def open_keys(self, replica: str) -> list[str]:
        return sorted(key for (name, key), state in self.states.items() if name == replica and state.opened_at is not None)
