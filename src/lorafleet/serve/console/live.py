"""Live metrics for the console, from the tail of the gateway's request log.

The request path stays untouched: the gateway already writes one JSON line per request (flushed
every `registry_poll_s`), so the console reads the last few MiB of that file when a browser asks,
and nothing is counted twice or kept in memory between polls. `live_view` is pure and holds the
arithmetic; `read_tail` is the only I/O.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lorafleet.percentiles import percentile
from lorafleet.serve.abreport import VersionStats, summarize

TAIL_BYTES = 4 << 20  # about 15,000 request lines: minutes of a busy gateway, hours of a quiet one


@dataclass(frozen=True)
class SeriesKey:
    alias: str
    version: str

    @property
    def label(self) -> str:
        return self.alias if self.version == self.alias else f"{self.alias} → {self.version}"


@dataclass(frozen=True)
class WindowStats:
    """One alias+version over the last `window_s` seconds."""

    alias: str
    version: str
    requests: int
    rate_per_s: float
    p50_latency_s: float | None
    p95_latency_s: float | None
    p50_ttft_s: float | None
    error_rate: float
    fallback_rate: float


@dataclass(frozen=True)
class LiveView:
    """What the Live metrics page draws: a table over the window, and per-bucket series for the charts."""

    now: float
    window_s: float
    bucket_s: float
    table: list[WindowStats]
    bucket_starts: list[float]  # unix seconds, oldest first
    series: dict[str, dict[str, list[float | None]]]  # label → {"rate", "p95", "ttft", "errors"} per bucket
    ab: dict[str, list[VersionStats]]  # canary alias → its versions, over every record read


def read_tail(path: Path, max_bytes: int = TAIL_BYTES) -> list[dict]:
    """The request log's last `max_bytes`, whole lines only; unparseable lines are skipped (ab-report lists them)."""
    if not path.is_file():
        return []
    with path.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - max_bytes))
        data = f.read()
    if size > max_bytes:
        data = data.partition(b"\n")[2]  # the first line is cut
    records = []
    for line in data.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records


def arrival(record: dict) -> float | None:
    """A record's arrival time in unix seconds, or None when it has none."""
    try:
        return datetime.fromisoformat(record["time"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def live_view(records: list[dict], now: float, canary_aliases: list[str], window_s: float = 60.0,
              bucket_s: float = 5.0, span_s: float = 300.0) -> LiveView:
    """Per alias+version stats over the last `window_s` and per `bucket_s` over the last `span_s`.

    Rates count every request; latency percentiles and TTFT count successful ones (status < 400),
    as `lorafleet ab-report` does. Buckets with no successful request have None latencies (a gap
    in the chart, not a zero).
    """
    buckets = int(span_s // bucket_s)
    first = now - buckets * bucket_s
    by_key: dict[SeriesKey, list[tuple[float, dict]]] = defaultdict(list)
    for record in records:
        at = arrival(record)
        if at is None or at < first or at > now:
            continue
        by_key[SeriesKey(str(record.get("alias")), str(record.get("version") or "-"))].append((at, record))
    table = [_window(key, [r for at, r in rows if at >= now - window_s], window_s) for key, rows in sorted(by_key.items(), key=_order)]
    series = {key.label: _buckets(rows, first, bucket_s, buckets) for key, rows in sorted(by_key.items(), key=_order)}
    ab = {alias: stats for alias in canary_aliases if (stats := summarize(records, alias))}  # only aliases with traffic
    return LiveView(now, window_s, bucket_s, [t for t in table if t.requests], [first + i * bucket_s for i in range(buckets)], series, ab)


def _order(item: tuple[SeriesKey, list]) -> tuple[str, str]:
    return item[0].alias, item[0].version


def _ok(record: dict) -> bool:
    return int(record.get("status", 0)) < 400


def _window(key: SeriesKey, rows: list[dict], window_s: float) -> WindowStats:
    ok = [r for r in rows if _ok(r)]
    latencies = [float(r["latency_s"]) for r in ok if r.get("latency_s") is not None]
    ttfts = [float(r["ttft_s"]) for r in ok if r.get("ttft_s") is not None]
    n = len(rows)
    return WindowStats(
        key.alias, key.version, n, n / window_s, percentile(latencies, 50), percentile(latencies, 95), percentile(ttfts, 50),
        (n - len(ok)) / n if n else 0.0, sum(bool(r.get("fallback")) for r in rows) / n if n else 0.0,
    )


def _buckets(rows: list[tuple[float, dict]], first: float, bucket_s: float, count: int) -> dict[str, list[float | None]]:
    grouped: list[list[dict]] = [[] for _ in range(count)]
    for at, record in rows:
        grouped[min(count - 1, int((at - first) // bucket_s))].append(record)
    out: dict[str, list[float | None]] = {"rate": [], "p95": [], "ttft": [], "errors": []}
    for group in grouped:
        ok = [r for r in group if _ok(r)]
        out["rate"].append(len(group) / bucket_s)
        out["p95"].append(percentile([float(r["latency_s"]) for r in ok if r.get("latency_s") is not None], 95))
        out["ttft"].append(percentile([float(r["ttft_s"]) for r in ok if r.get("ttft_s") is not None], 50))
        out["errors"].append((len(group) - len(ok)) / len(group) if group else None)
    return out
