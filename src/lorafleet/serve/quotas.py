"""Per-key limits (requests and tokens per minute, requests in flight) and fleet capacity.

The decisions are pure functions over small frozen states (`Bucket`, `admit`); `Quotas` only keeps
those states per key for one gateway process. Limits are per gateway: N gateways on one registry
allow a key up to N times its rates (said in the README).

Requests per minute: a token bucket of `rpm` holding `rpm` at most, refilled at rpm/60 a second;
each request takes one. Tokens per minute: a bucket of `tpm`; a request is admitted while the bucket
is above zero, and its real usage (prompt + completion, known only at the end) is taken afterwards,
so the bucket may go below zero and holds the next requests back until it refills.
A refusal is a 429 `rate_limit_exceeded` with Retry-After; a full fleet is a 503 (not the tenant's fault).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace

from lorafleet.serve.auth import Principal
from lorafleet.serve.errors import GatewayError


@dataclass(frozen=True)
class Bucket:
    """A token bucket at time `at` (monotonic seconds)."""

    capacity: float
    per_second: float
    level: float
    at: float

    @classmethod
    def per_minute(cls, limit: int, now: float) -> Bucket:
        return cls(float(limit), limit / 60.0, float(limit), now)

    def refilled(self, now: float) -> Bucket:
        return replace(self, level=min(self.capacity, self.level + max(0.0, now - self.at) * self.per_second), at=now)

    def wait_for(self, amount: float) -> float:
        """Seconds until `level` reaches `amount` (0 when it already has)."""
        return max(0.0, (amount - self.level) / self.per_second)


@dataclass(frozen=True)
class Admission:
    """The outcome of `admit`: the buckets to keep, and the refusal when there is one."""

    rpm: Bucket | None
    tpm: Bucket | None
    refusal: GatewayError | None = None


def admit(principal: Principal, rpm: Bucket | None, tpm: Bucket | None, in_flight: int, now: float) -> Admission:
    """Whether one more request of `principal` may start now (buckets already sized to its limits)."""
    rpm = rpm.refilled(now) if rpm else None
    tpm = tpm.refilled(now) if tpm else None
    if principal.max_concurrency is not None and in_flight >= principal.max_concurrency:
        return Admission(rpm, tpm, rate_limited(f"{principal.max_concurrency} requests in flight at once", 1.0, "concurrency_limit_exceeded"))
    if rpm is not None and rpm.level < 1:
        return Admission(rpm, tpm, rate_limited(f"{principal.rpm} requests per minute", rpm.wait_for(1)))
    if tpm is not None and tpm.level <= 0:
        return Admission(rpm, tpm, rate_limited(f"{principal.tpm} tokens per minute", tpm.wait_for(1e-9)))
    return Admission(replace(rpm, level=rpm.level - 1) if rpm else None, tpm)


def rate_limited(what: str, wait_s: float, code: str = "rate_limit_exceeded") -> GatewayError:
    retry = max(1, math.ceil(wait_s))
    return GatewayError(429, f"Rate limit reached for this API key: {what}. Retry after {retry} s.", "rate_limit_exceeded",
                        code=code, retry_after=retry)


def fleet_full(in_flight: int, per_replica: int, healthy: int) -> bool:
    """True when the gateway already forwards as many requests as its healthy replicas may hold."""
    return in_flight >= per_replica * max(healthy, 0)


def overloaded() -> GatewayError:
    return GatewayError(503, "The fleet is at capacity. Retry later.", "service_unavailable", code="fleet_overloaded", retry_after=1)


@dataclass
class Quotas:
    """The buckets and in-flight counts of every key this gateway has seen (keyed by key id)."""

    rpm: dict[str, Bucket] = field(default_factory=dict)
    tpm: dict[str, Bucket] = field(default_factory=dict)
    in_flight: Counter[str] = field(default_factory=Counter)
    total_in_flight: int = 0

    def start(self, principal: Principal, now: float) -> None:
        """Admit one request or raise its 429; every admitted request must be `end`ed once."""
        key = principal.key_id
        if key is not None:
            rpm = self._bucket(self.rpm, key, principal.rpm, now)
            tpm = self._bucket(self.tpm, key, principal.tpm, now)
            outcome = admit(principal, rpm, tpm, self.in_flight[key], now)
            self._keep(key, outcome)
            if outcome.refusal is not None:
                raise outcome.refusal
            self.in_flight[key] += 1
        self.total_in_flight += 1

    def end(self, principal: Principal, tokens: int, now: float) -> None:
        """The request finished after using `tokens` (prompt + completion)."""
        self.total_in_flight -= 1
        key = principal.key_id
        if key is None:
            return
        self.in_flight[key] -= 1
        if self.in_flight[key] <= 0:
            del self.in_flight[key]
        if key in self.tpm and tokens:
            bucket = self.tpm[key].refilled(now)
            self.tpm[key] = replace(bucket, level=bucket.level - tokens)

    @staticmethod
    def _bucket(buckets: dict[str, Bucket], key: str, limit: int | None, now: float) -> Bucket | None:
        if limit is None:
            buckets.pop(key, None)
            return None
        bucket = buckets.get(key)
        if bucket is None or bucket.capacity != limit:  # new key, or its limit changed in the registry
            bucket = Bucket.per_minute(limit, now)
        return bucket

    def _keep(self, key: str, outcome: Admission) -> None:
        for buckets, bucket in ((self.rpm, outcome.rpm), (self.tpm, outcome.tpm)):
            if bucket is not None:
                buckets[key] = bucket
