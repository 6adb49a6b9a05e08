"""The gateway's Prometheus metrics, in base units with `_total` counters, on a registry of its own.

`alias` is the model name the client asked for (or `unknown` for a name the gateway does not serve,
so a client cannot grow the label set); `version` is `NAME@vN` or the base model's name.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets from a few milliseconds (cached short answers on a GPU) to minutes (long CPU generations).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNKNOWN_ALIAS = "unknown"


class GatewayMetrics:
    """Every metric the gateway exports; one instance per gateway app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lorafleet_requests", "Requests answered, by alias, version and HTTP status.", ["alias", "version", "status"], registry=r
        )
        self.latency = Histogram(
            "lorafleet_adapter_latency_seconds", "Request latency from arrival to the last byte, per alias and version.",
            ["alias", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "lorafleet_time_to_first_token_seconds", "Time from arrival to the first byte of the answer, per alias and version.",
            ["alias", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.prompt_tokens = Counter(
            "lorafleet_prompt_tokens", "Prompt tokens processed, per alias and version.", ["alias", "version"], registry=r
        )
        self.completion_tokens = Counter(
            "lorafleet_completion_tokens", "Completion tokens generated, per alias and version.", ["alias", "version"], registry=r
        )
        self.canary_picks = Counter(
            "lorafleet_canary_picks", "Versions picked for aliases that split traffic between several versions.",
            ["alias", "version"], registry=r,
        )
        self.fallbacks = Counter(
            "lorafleet_fallbacks", "Requests answered by the base model because their adapter could not be loaded.",
            ["alias", "version", "reason"], registry=r,
        )
        self.adapter_loads = Counter(
            "lorafleet_adapter_loads", "Adapter loads into an engine replica.", ["version", "replica"], registry=r
        )
        self.adapter_load_failures = Counter(
            "lorafleet_adapter_load_failures", "Adapter loads that failed (corrupt, refused, timeout, engine_down).",
            ["version", "replica", "reason"], registry=r,
        )
        self.adapter_load_seconds = Histogram(
            "lorafleet_adapter_load_seconds", "Time to load an adapter into a running engine.", buckets=LOAD_BUCKETS, registry=r
        )
        self.replicas_up = Gauge("lorafleet_replicas_up", "Engine replicas that pass their health check.", registry=r)
        self.replica_up = Gauge("lorafleet_replica_up", "1 when the replica passes its health check.", ["replica"], registry=r)
        self.adapters_resident = Gauge(
            "lorafleet_adapters_resident", "Adapters loaded on each replica.", ["replica"], registry=r
        )
        self.registry_read_failures = Counter(
            "lorafleet_registry_read_failures", "Registry reads that failed (the last good routing stays live).", registry=r
        )
