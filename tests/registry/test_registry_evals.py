"""Recorded evals in the registry (`lorafleet eval --record`): stored per version, read back newest first, gone with the version."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, insert, select

from lorafleet.registry import db, evals, service
from lorafleet.registry.errors import NotFound
from lorafleet.registry.evals import EvalRecord, EvalSummary
from lorafleet.registry.push import init_base, push
from lorafleet.registry.schema import MIGRATIONS, schema_version

on_both_backends = pytest.mark.usefixtures("registry_backend")
SUMMARY = EvalSummary(scored=20, failed=1, json_valid=0.95, exact=0.8, fields={"category": 0.9, "priority": 0.85},
                      latency_p50_s=0.42, latency_p95_s=1.3, system_prompt=False)


def _record(name: str, version: int, started_at: str, cases: int = 20) -> EvalRecord:
    return EvalRecord(name, version, "support", started_at, "dev.jsonl", "ab" * 32, cases, 20, SUMMARY)


@on_both_backends
def test_record_and_read_back(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    push(make_artifact(seed=0), "support")
    push(make_artifact(seed=1), "support")
    stored = evals.record([_record("support", 1, "2026-11-30T19:00:00+00:00", 18), _record("support", 2, "2026-11-30T19:00:00+00:00", 2)])
    assert all(r.recorded_at is not None for r in stored)
    evals.record([_record("support", 1, "2026-11-30T20:00:00+00:00")])

    v1 = evals.evals_of("support@v1")
    assert [(r.started_at, r.cases) for r in v1] == [("2026-11-30T20:00:00+00:00", 20), ("2026-11-30T19:00:00+00:00", 18)]
    assert v1[0].summary == SUMMARY and v1[0].data_sha256 == "ab" * 32 and v1[0].recorded_at.tzinfo is not None
    assert [r.cases for r in service.show("support@v2").evals] == [2]  # `adapters show` (and the console) get them too
    assert service.to_jsonable(service.show("support@v2"))["evals"][0]["summary"]["fields"] == {"category": 0.9, "priority": 0.85}

    service.remove("support@v1")  # a removed version takes its evals along
    push(make_artifact(seed=2), "support")
    assert evals.evals_of("support@v1") == [] and evals.evals_of("support@v3") == []


@on_both_backends
def test_a_version_missing_from_this_registry_stores_nothing(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    push(make_artifact(), "support")
    with pytest.raises(NotFound, match="support@v7 answered the eval but is not in this registry"):
        evals.record([_record("support", 1, "2026-11-30T19:00:00+00:00"), _record("support", 7, "2026-11-30T19:00:00+00:00")])
    assert evals.evals_of("support@v1") == []  # one transaction: the known version's record went too


def test_a_registry_made_before_evals_is_migrated(tmp_path: Path) -> None:
    """An existing SQLite registry at schema version 2 (keys, no evals) gains the eval table on first use."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with create_engine(url).begin() as conn:  # the schema as lorafleet left it at version 2
        schema_version.create(conn)
        conn.execute(insert(schema_version).values(version=2))
        for step in MIGRATIONS[:2]:
            step(conn)
    engine = db.connect(url)
    with engine.connect() as conn:
        assert conn.execute(select(schema_version.c.version)).scalar_one() == db.SCHEMA_VERSION
        assert "eval_runs" in inspect(conn).get_table_names()
