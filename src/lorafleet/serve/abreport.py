"""`lorafleet ab-report`: the seed's canary comparison, per version of one alias, from the request log."""

from __future__ import annotations

from dataclasses import dataclass

from lorafleet.percentiles import percentile


@dataclass(frozen=True)
class VersionStats:
    """One version's share of an alias's traffic and how it went."""

    version: str
    requests: int
    share: float  # of the alias's requests
    p50_latency_s: float | None
    p95_latency_s: float | None
    p50_ttft_s: float | None
    error_rate: float  # status >= 400
    fallback_rate: float
    mean_prompt_tokens: float | None
    mean_completion_tokens: float | None
    completion_tokens: int




def summarize(records: list[dict], alias: str) -> list[VersionStats]:
    """Per-version statistics of the requests for `alias`, most requests first.

    Requests answered by the base model as a fallback count under the version that was picked
    (that is the version whose fallback rate they raise); requests that never reached a version
    (e.g. no healthy replica) are grouped under `-`.
    """
    mine = [r for r in records if r.get("alias") == alias]
    groups: dict[str, list[dict]] = {}
    for record in mine:
        groups.setdefault(record.get("version") or "-", []).append(record)
    stats = [_stats(version, rows, len(mine)) for version, rows in groups.items()]
    return sorted(stats, key=lambda s: (-s.requests, s.version))


def _stats(version: str, rows: list[dict], total: int) -> VersionStats:
    ok = [r for r in rows if int(r.get("status", 0)) < 400]
    latencies = [float(r["latency_s"]) for r in ok if r.get("latency_s") is not None]
    ttfts = [float(r["ttft_s"]) for r in ok if r.get("ttft_s") is not None]
    prompt = [int(r["prompt_tokens"]) for r in ok if r.get("prompt_tokens") is not None]
    completion = [int(r["completion_tokens"]) for r in ok if r.get("completion_tokens") is not None]
    return VersionStats(
        version=version,
        requests=len(rows),
        share=len(rows) / total,
        p50_latency_s=percentile(latencies, 50),
        p95_latency_s=percentile(latencies, 95),
        p50_ttft_s=percentile(ttfts, 50),
        error_rate=(len(rows) - len(ok)) / len(rows),
        fallback_rate=sum(bool(r.get("fallback")) for r in rows) / len(rows),
        mean_prompt_tokens=sum(prompt) / len(prompt) if prompt else None,
        mean_completion_tokens=sum(completion) / len(completion) if completion else None,
        completion_tokens=sum(completion),
    )
