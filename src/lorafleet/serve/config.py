"""Typed configuration of `lorafleet serve`: `FleetConfig`, read from YAML with CLI overrides on top.

Only what a person decides lives here (where to listen, how many replicas, memory budgets, timing).
Engine flags that follow from the adapters (context length, LoRA rank, working set, dtype) are
derived by `serve.flags`, never configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lorafleet.config import read_yaml_options
from lorafleet.serve.clamps import RequestLimits


class FleetConfigError(ValueError):
    """A fleet config file or override that does not validate; the message names the field."""


class EngineEndpoint(BaseModel):
    """A vLLM OpenAI server run elsewhere, attached instead of started."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="base URL of the vLLM server, e.g. http://10.0.0.5:8000")
    api_key: str | None = Field(None, description="the server's --api-key, if it has one")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"engine url {value!r} must start with http:// or https://")
        return value.rstrip("/")


class Timeouts(BaseModel):
    """How long the gateway waits on an engine. First-token and idle apply to streamed answers; an unstreamed
    answer arrives whole, so the total bounds it."""

    model_config = ConfigDict(extra="forbid")

    connect_s: float = Field(5.0, gt=0, description="to open a connection to a replica")
    first_token_s: float = Field(60.0, gt=0, description="from sending a streamed request to its first event")
    idle_s: float = Field(60.0, gt=0, description="longest gap between two events of a stream")
    total_s: float = Field(600.0, gt=0, description="longest a forwarded request may run")


class AliasTimeouts(BaseModel):
    """An alias's own timeouts; unset fields keep the fleet's."""

    model_config = ConfigDict(extra="forbid")

    connect_s: float | None = Field(None, gt=0, description="to open a connection to a replica")
    first_token_s: float | None = Field(None, gt=0, description="from sending a streamed request to its first event")
    idle_s: float | None = Field(None, gt=0, description="longest gap between two events of a stream")
    total_s: float | None = Field(None, gt=0, description="longest a forwarded request may run")


class BreakerConfig(BaseModel):
    """The circuit breaker of each (replica, adapter) pair."""

    model_config = ConfigDict(extra="forbid")

    failures: int = Field(3, ge=1, description="failures in a row that open the breaker")
    cooldown_s: float = Field(10.0, gt=0, description="how long an open pair is skipped before one probe request")


class FleetConfig(BaseModel):
    """Every option of `lorafleet serve`."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address the gateway listens on")
    port: int = Field(8080, ge=0, le=65535, description="gateway port (0 = any free port)")
    replicas: int = Field(1, ge=1, description="vLLM replicas to start (ignored when engines are attached)")
    engines: list[EngineEndpoint] = Field(
        default_factory=list, description="attach to these vLLM servers instead of starting replicas"
    )
    auth: Literal["auto", "required", "none"] = Field(
        "auto", description="client API keys (lorafleet keys): auto = required once the registry holds any key; "
        "none = open, for a loopback demo only"
    )
    metrics_require_admin: bool = Field(False, description="serve /metrics and /metrics/engines to admin keys only")
    max_loras: int = Field(4, ge=1, description="most adapters one engine batch may mix (vLLM --max-loras cap)")
    max_cpu_loras: int = Field(
        16, ge=1, description="most adapters one replica keeps loaded; beyond it the least recently used is unloaded"
    )
    max_model_len: int | None = Field(
        None, ge=16, description="context length when no routed adapter says one (default: the base model's)"
    )
    kv_cache_gib: float | None = Field(
        None, gt=0, description="CPU: KV-cache GiB per replica (default: a share of host memory, see flags.py)"
    )
    reserved_cpus: int | None = Field(
        None, ge=0, description="CPU: cores left to the gateway and engine front ends (default 1 when spare)"
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="CUDA: fraction of each GPU the replicas on it may use together"
    )
    startup_timeout_s: float = Field(600, gt=0, description="how long a replica may take to become healthy")
    health_interval_s: float = Field(1.0, gt=0, description="seconds between replica health checks")
    registry_poll_s: float = Field(1.0, gt=0, description="seconds between registry reads (alias changes)")
    load_timeout_s: float = Field(60, gt=0, description="how long an adapter load may take before it counts as failed")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="engine timeouts of every alias")
    alias_timeouts: dict[str, AliasTimeouts] = Field(default_factory=dict, description="per-alias overrides of `timeouts`")
    breaker: BreakerConfig = Field(default_factory=BreakerConfig, description="per (replica, adapter) circuit breaker")
    limits: RequestLimits = Field(default_factory=RequestLimits, description="request clamps (body size, n, stop, ...)")
    max_inflight_per_replica: int = Field(
        64, ge=1, description="requests the gateway forwards at once per healthy replica; beyond it new ones get 503"
    )
    drain_timeout_s: float = Field(30, ge=0, description="after SIGTERM, how long requests in flight may take to finish")
    fallback_cooldown_s: float = Field(
        60, ge=0, description="after a failed load, serve that version's traffic from the base model this long"
    )
    restart_backoff_s: float = Field(1.0, gt=0, description="first wait before restarting a crashed replica")
    restart_backoff_max_s: float = Field(60, gt=0, description="longest wait between restarts")
    request_log: Path | None = Field(
        None, description="JSONL request log (default LORAFLEET_HOME/logs/requests.jsonl)"
    )
    log_prompts: bool = Field(False, description="also write request messages/prompts into the request log")
    engine_args: list[str] = Field(
        default_factory=list, description="extra vLLM arguments appended verbatim (e.g. --max-num-seqs 64)"
    )


def timeouts_for(config: FleetConfig, alias: str) -> Timeouts:
    """The fleet's timeouts with `alias`'s overrides on top."""
    override = config.alias_timeouts.get(alias)
    if override is None:
        return config.timeouts
    return config.timeouts.model_copy(update=override.model_dump(exclude_none=True))


def load_fleet_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> FleetConfig:
    """Defaults ← YAML at `path` ← `overrides` (None values are ignored: an unset flag).

    Raises FleetConfigError naming the file and the field when something does not validate.
    """
    values: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        where = str(path)
        values.update(read_yaml_options(path, FleetConfigError, "fleet config"))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return FleetConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise FleetConfigError(f"invalid fleet config ({where}): {problems}") from None
