"""Eval results recorded against adapter versions (`lorafleet eval --record`), read by `adapters show` and the console.

One record is one eval run's scores over the conversations that one version answered: an eval of a
canary alias gives a record per version it reached, each scored on its own answers only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from sqlalchemy import Connection, insert, select

from lorafleet.registry import aliases, db
from lorafleet.registry.errors import NotFound
from lorafleet.registry.schema import eval_runs


@dataclass(frozen=True)
class EvalSummary:
    """The scores of one version in one run; rates are shares of the scored conversations (None when none was scored)."""

    scored: int
    failed: int
    json_valid: float | None
    exact: float | None
    fields: dict[str, float] = field(default_factory=dict)  # expected field → accuracy
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    system_prompt: bool = False  # the eval put its own instructions in every conversation


@dataclass(frozen=True)
class EvalRecord:
    """One recorded eval of `name@vversion`."""

    name: str
    version: int
    model: str  # what the eval asked for: an alias or NAME@vN
    started_at: str  # ISO 8601, UTC
    data_name: str
    data_sha256: str
    cases: int  # conversations this version answered
    run_cases: int  # conversations sent for `model` in all
    summary: EvalSummary
    recorded_at: datetime | None = None  # set by the registry

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


def record(records: list[EvalRecord]) -> list[EvalRecord]:
    """Store `records` in one transaction; raises NotFound (storing none) when a version is not in this registry."""
    def write(conn: Connection) -> list[EvalRecord]:
        at = db.now()
        for r in records:
            if db.get_version(conn, r.name, r.version, lock=True) is None:  # locked against a concurrent rm
                raise NotFound(
                    f"{r.ref} answered the eval but is not in this registry; point LORAFLEET_HOME or "
                    "LORAFLEET_REGISTRY_URL at the registry the gateway serves"
                )
        rows = [{**_row(r), "recorded_at": at} for r in records]
        if rows:
            conn.execute(insert(eval_runs), rows)
        return [EvalRecord(**{**_fields(r), "recorded_at": at}) for r in records]

    return db.run_transaction(db.connect(), write)


def evals_of(ref: str) -> list[EvalRecord]:
    """The recorded evals of `NAME@vN`, newest first (none for a version never evaluated)."""
    name, version = aliases.parse_version_ref(ref)
    return db.run_transaction(db.connect(), lambda conn: read(conn, name, version))


def read(conn: Connection, name: str, version: int) -> list[EvalRecord]:
    query = (select(eval_runs).where(eval_runs.c.name == name, eval_runs.c.version == version)
             .order_by(eval_runs.c.recorded_at.desc(), eval_runs.c.id.desc()))
    return [_record(row) for row in conn.execute(query).mappings()]


def _fields(r: EvalRecord) -> dict:
    return {f: getattr(r, f) for f in r.__dataclass_fields__}


def _row(r: EvalRecord) -> dict:
    row = {f: v for f, v in _fields(r).items() if f not in ("summary", "recorded_at")}
    return {**row, "summary": json.dumps(asdict(r.summary))}


def _record(row) -> EvalRecord:  # type: ignore[no-untyped-def]
    summary = EvalSummary(**json.loads(row["summary"]))
    recorded = row["recorded_at"]
    recorded = recorded if recorded.tzinfo else recorded.replace(tzinfo=timezone.utc)  # SQLite drops the zone
    return EvalRecord(row["name"], row["version"], row["model"], row["started_at"], row["data_name"], row["data_sha256"],
                      row["cases"], row["run_cases"], summary, recorded)
