"""What the console's pages show, computed from the gateway's state and the registry's records.

Pure functions: the route handlers in routes.py gather the inputs (replicas, engine metrics text,
registry rows) and render what these return.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from lorafleet.registry.aliases import Route
from lorafleet.registry.errors import InvalidSpec
from lorafleet.registry.evals import EvalRecord
from lorafleet.registry.fleet import FleetView
from lorafleet.serve.replicas import Replica

# vLLM's own names (v1 engine); a replica that does not export one shows "?" rather than a guess.
KV_USAGE = "vllm:kv_cache_usage_perc"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"


@dataclass(frozen=True)
class EngineStats:
    """What a replica's own metrics say right now."""

    kv_cache_usage: float | None = None  # fraction 0..1
    running: int | None = None
    waiting: int | None = None


@dataclass(frozen=True)
class ReplicaRow:
    """One replica on the Fleet page."""

    name: str
    url: str
    healthy: bool
    resident: list[str]
    in_flight: int  # requests this gateway has on the replica now
    engine: EngineStats


@dataclass(frozen=True)
class AliasRow:
    """One alias with its live routing."""

    alias: str
    revision: int
    routes: tuple[Route, ...]
    fallback_prompt: str | None

    @property
    def canary(self) -> bool:
        return len(self.routes) > 1


@dataclass(frozen=True)
class LossCurves:
    """Training and evaluation loss by step, from an artifact's metrics.jsonl."""

    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    unreadable: int = 0  # lines that were not metrics (shown as a count, never dropped silently)


def engine_stats(text: str) -> dict[str, EngineStats]:
    """Per-replica stats from `/metrics/engines` text (samples labelled `replica`); gauges summed over engines' other labels."""
    values: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (KV_USAGE, RUNNING, WAITING) and "replica" in sample.labels:
                per = values.setdefault(sample.labels["replica"], {})
                per[sample.name] = per.get(sample.name, 0.0) + sample.value
    return {
        replica: EngineStats(
            kv_cache_usage=v.get(KV_USAGE),
            running=int(v[RUNNING]) if RUNNING in v else None,
            waiting=int(v[WAITING]) if WAITING in v else None,
        )
        for replica, v in values.items()
    }


def replica_rows(replicas: Iterable[Replica], stats: dict[str, EngineStats]) -> list[ReplicaRow]:
    return [
        ReplicaRow(r.name, r.url, r.healthy, sorted(r.resident), sum(c for c in r.busy.values() if c > 0), stats.get(r.name, EngineStats()))
        for r in replicas
    ]


def alias_rows(fleet: FleetView) -> list[AliasRow]:
    return [AliasRow(a.alias, a.revision, a.routes, a.fallback_prompt) for _, a in sorted(fleet.aliases.items())]


def model_choices(fleet: FleetView, base_name: str) -> list[str]:
    """What the playground can ask: the base model, the aliases, then every version."""
    return [base_name, *sorted(fleet.aliases), *sorted(fleet.versions)]


def loss_curves(lines: list[dict]) -> LossCurves:
    """Curves from metrics.jsonl lines (`{"type": "train", "step", "loss"}`, `{"type": "eval", "step", "eval_loss"}`)."""
    curves = LossCurves()
    for line in lines:
        kind, step = line.get("type"), line.get("step")
        value = line.get("loss") if kind == "train" else line.get("eval_loss") if kind == "eval" else None
        if not isinstance(step, int) or not _finite(value):
            curves = _bump_unreadable(curves)
            continue
        if kind == "train":
            curves.train_steps.append(step)
            curves.train_loss.append(float(value))  # type: ignore[arg-type]
        else:
            curves.eval_steps.append(step)
            curves.eval_loss.append(float(value))  # type: ignore[arg-type]
    return curves


def routing_targets(rows: list[tuple[str, str]]) -> list[str]:
    """The console's weight form → `alias set` targets (`NAME@vN=W`).

    `rows` are (version ref, weight as typed). A blank or 0 weight leaves that version out; any other
    weight must be a whole number (no sign, no decimals). The registry's `parse_routing` then checks
    the rest (1..100 each, sum exactly 100). Raises InvalidSpec naming the row.
    """
    targets: list[str] = []
    for ref, typed in rows:
        text = typed.strip()
        if text in ("", "0"):
            continue
        if not text.isascii() or not text.isdigit():
            raise InvalidSpec(f"weight of {ref} is {typed!r}: a weight is a whole number of percent (e.g. 90)")
        targets.append(f"{ref}={int(text)}")
    if not targets:
        raise InvalidSpec("give at least one version a weight above 0")
    return targets


@dataclass(frozen=True)
class EvalRow:
    """One recorded eval on the Adapters page, as text."""

    date: str
    data: str
    asked: str
    answered: str
    json_valid: str
    fields: str
    exact: str
    latency: str


def eval_rows(records: list[EvalRecord]) -> list[EvalRow]:
    """Recorded evals (`lorafleet eval --record`) as table rows, in the order given."""
    rows = []
    for r in records:
        s = r.summary
        rows.append(EvalRow(
            date=r.started_at.replace("T", " ").removesuffix("+00:00"),
            data=f"{r.data_name} ({r.data_sha256[:12]})",
            asked=r.model + (" + prompt" if s.system_prompt else ""),
            answered=f"{r.cases} of {r.run_cases}" + (f", {s.failed} failed" if s.failed else ""),
            json_valid=_rate(s.json_valid),
            fields=", ".join(f"{name} {_rate(rate)}" for name, rate in sorted(s.fields.items())) or "-",
            exact=_rate(s.exact),
            latency=f"{_secs(s.latency_p50_s)} / {_secs(s.latency_p95_s)}",
        ))
    return rows


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def manifest_facts(manifest: dict) -> list[tuple[str, str]]:
    """The manifest fields a person compares versions by, as (label, text) rows."""
    lora = manifest.get("lora") or {}
    dataset = manifest.get("dataset") or {}
    metrics = manifest.get("metrics") or {}
    modules = lora.get("target_modules")
    return [
        ("base model", str(manifest.get("base_model", "?"))),
        ("base fingerprint", str(manifest.get("base_fingerprint", "?"))),
        ("tokenizer fingerprint", str(manifest.get("tokenizer_fingerprint", "?"))),
        ("rank / alpha", f"{lora.get('r', '?')} / {lora.get('alpha', '?')}"),
        ("target modules", ", ".join(modules) if isinstance(modules, list) else str(modules)),
        ("dropout / rsLoRA / DoRA", f"{lora.get('dropout', '?')} / {lora.get('use_rslora', '?')} / {lora.get('use_dora', '?')}"),
        ("quantization", str(lora.get("quantization", "none"))),
        ("max sequence length", str(manifest.get("max_seq_length", "?"))),
        ("dataset sha256", str(dataset.get("sha256", "?"))),
        ("dataset samples", _samples(dataset)),
        ("final train / eval loss", f"{_num(metrics.get('train_loss'))} / {_num(metrics.get('eval_loss'))}"),
        ("steps / tokens seen", f"{metrics.get('steps', '?')} / {metrics.get('tokens_seen', '?')}"),
        ("created", str(manifest.get("created_at", "?"))),
        ("lorafleet version", str(manifest.get("lorafleet_version", "?"))),
    ]


def _samples(dataset: dict) -> str:
    parts = [f"{k.removesuffix('_samples')} {v}" for k, v in dataset.items() if k.endswith("_samples") and isinstance(v, int)]
    return ", ".join(parts) or "?"


def _num(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "?" if value is None else str(value)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bump_unreadable(curves: LossCurves) -> LossCurves:
    return LossCurves(curves.train_steps, curves.train_loss, curves.eval_steps, curves.eval_loss, curves.unreadable + 1)
