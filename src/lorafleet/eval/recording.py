"""`lorafleet eval --record`: which adapter versions answered, and each one's scores on its own answers.

The lorafleet gateway names the version that answered each request in its `x-lorafleet-adapter`
header (the base model's name when the base answered, e.g. on fallback). An eval of a canary alias
reaches several versions, so each version is scored only on the conversations it answered; answers
from the base model, and failures without the header, belong to no version and are recorded nowhere
(`cases` out of `run_cases` shows how many a version got).
"""

from __future__ import annotations

from pathlib import Path

from lorafleet.artifact import sha256_file
from lorafleet.eval.report import CaseResult, EvalReport, ModelReport
from lorafleet.eval.scoring import model_report
from lorafleet.registry import evals
from lorafleet.registry.aliases import parse_version_ref
from lorafleet.registry.errors import InvalidSpec
from lorafleet.registry.evals import EvalRecord, EvalSummary


def answering_version(adapter: str | None) -> tuple[str, int] | None:
    """(name, version) when the header names an adapter version; None for the base model or no header."""
    if not adapter:
        return None
    try:
        return parse_version_ref(adapter)
    except InvalidSpec:
        return None


def summary(m: ModelReport) -> EvalSummary:
    """The scores worth keeping from one model's report (rates over its scored conversations)."""
    return EvalSummary(
        scored=m.scored, failed=m.failed,
        json_valid=m.rate(m.json_valid) if m.scored else None, exact=m.rate(m.exact) if m.scored else None,
        fields={f.field: f.rate for f in m.fields}, latency_p50_s=m.latency.p50, latency_p95_s=m.latency.p95,
        system_prompt=m.system_prompt is not None,
    )


def version_records(report: EvalReport, data_name: str, data_sha256: str) -> list[EvalRecord]:
    """One record per (model evaluated, version that answered it), scored on that version's answers only."""
    records: list[EvalRecord] = []
    for m in report.models:
        by_version: dict[tuple[str, int], list[CaseResult]] = {}
        for case in m.cases:
            version = answering_version(case.adapter)
            if version is not None:
                by_version.setdefault(version, []).append(case)
        for (name, version), cases in sorted(by_version.items()):
            scores = summary(model_report(m.model, m.system_prompt, cases, wall_s=0.0))
            records.append(EvalRecord(name, version, m.model, report.started_at, data_name, data_sha256, len(cases), m.requests, scores))
    return records


def record_report(report: EvalReport, data: Path) -> list[EvalRecord]:
    """Store the report's version records in the registry; [] when no answer named a version (nothing stored)."""
    records = version_records(report, data.name, sha256_file(data))
    return evals.record(records) if records else []
