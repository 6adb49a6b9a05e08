"""Live metrics for the console, from the tail of the gateway's request log.

The request path stays untouched: the gateway already writes one JSON line per request (flushed
every `registry_poll_s`), so the console reads that file when a browser asks, from where its
previous read stopped (`LogTail`), and nothing is counted twice. `live_view` is pure and holds the
arithmetic; `LogTail.read` is the only I/O.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lorafleet.percentiles import percentile
from lorafleet.serve.abreport import VersionStats, summarize

TAIL_BYTES = 4 << 20  # where the first read starts: about 15,000 request lines back
Timed = tuple[float | None, dict]  # (arrival in unix seconds, request log record)
MAX_RECORDS = 20_000  # records kept between reads: minutes of a busy gateway, hours of a quiet one


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


class LogTail:
    """The request log's most recent records, read incrementally: each call parses only the lines written
    since the previous one, so a console left open costs the gateway in proportion to its traffic.

    The first read starts `max_bytes` before the end (whole lines only). A log that was rotated (new
    inode) or truncated is read afresh. Lines that do not parse are skipped (`lorafleet ab-report` lists them).
    """

    def __init__(self, path: Path, max_records: int = MAX_RECORDS, max_bytes: int = TAIL_BYTES):
        self.path, self.max_bytes = Path(path), max_bytes
        self.records: deque[Timed] = deque(maxlen=max_records)
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""  # a line still being written
        self._lock = threading.Lock()  # two console requests may read at once (worker threads)

    def read(self) -> list[Timed]:
        """Every record kept, oldest first, each with its arrival time (parsed once, when first read)."""
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                return list(self.records)
            cut = False
            if stat.st_ino != self._inode or stat.st_size < self._offset:
                start = max(0, stat.st_size - self.max_bytes)
                # from the byte before `start`: the first piece read is then a cut line or "" (start began a line)
                self._inode, self._offset, self._partial = stat.st_ino, max(0, start - 1), b""
                self.records.clear()
                cut = start > 0
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
            self._offset += len(data)
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            for line in lines[1:] if cut else lines:
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    self.records.append((arrival(value), value))
            return list(self.records)


def arrival(record: dict) -> float | None:
    """A record's arrival time in unix seconds, or None when it has none."""
    try:
        return datetime.fromisoformat(record["time"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def live_view(records: list[Timed], now: float, canary_aliases: list[str], window_s: float = 60.0,
              bucket_s: float = 5.0, span_s: float = 300.0) -> LiveView:
    """Per alias+version stats over the last `window_s` and per `bucket_s` over the last `span_s`, from
    (arrival, record) pairs (`LogTail.read`; a None arrival is left out of the windows, kept in the A/B).

    Rates count every request; latency percentiles and TTFT count successful ones (status < 400),
    as `lorafleet ab-report` does. Buckets with no successful request have None latencies (a gap
    in the chart, not a zero).
    """
    buckets = int(span_s // bucket_s)
    first = now - buckets * bucket_s
    by_key: dict[SeriesKey, list[tuple[float, dict]]] = defaultdict(list)
    for at, record in records:
        if at is None or at < first or at > now:
            continue
        by_key[SeriesKey(str(record.get("alias")), str(record.get("version") or "-"))].append((at, record))
    table = [_window(key, [r for at, r in rows if at >= now - window_s], window_s) for key, rows in sorted(by_key.items(), key=_order)]
    series = {key.label: _buckets(rows, first, bucket_s, buckets) for key, rows in sorted(by_key.items(), key=_order)}
    canaries = set(canary_aliases)
    mine = [record for _, record in records if record.get("alias") in canaries]
    ab = {alias: stats for alias in canary_aliases if (stats := summarize(mine, alias))}  # only aliases with traffic
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
