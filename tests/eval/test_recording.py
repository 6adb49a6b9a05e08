"""`eval --record`'s decision as tables: which version answered each case, and each version's scores on its own answers."""

from __future__ import annotations

import pytest

from lorafleet.eval.recording import answering_version, version_records
from lorafleet.eval.report import CaseResult, EvalReport
from lorafleet.eval.scoring import model_report, score_answer

RIGHT, WRONG = '{"category": "billing"}', '{"category": "other"}'


@pytest.mark.parametrize("header, expected", [
    ("support@v2", ("support", 2)),
    ("triage-bot@v13", ("triage-bot", 13)),
    ("smollm2-135m-instruct", None),  # the base model answered (fallback or asked directly)
    ("support", None),  # no version: not something the gateway sends, never guessed
    ("", None),
    (None, None),  # vLLM or another server: no header at all
])
def test_answering_version(header: str | None, expected: tuple[str, int] | None) -> None:
    assert answering_version(header) == expected


def _case(line: int, adapter: str | None, answer: str | None, latency: float = 1.0) -> CaseResult:
    expected = {"category": "billing"}
    status = "ok" if answer is not None else "http_error"
    return CaseResult(line=line, status=status, answer=answer, adapter=adapter, expected=expected,
                      latency_s=latency if answer is not None else None, score=score_answer(answer, expected))


def _report(model: str, cases: list[CaseResult], prompt: str | None = None) -> EvalReport:
    return EvalReport(endpoint="http://gw", data="dev.jsonl", lines=len(cases), temperature=0, max_tokens=8, concurrency=1,
                      timeout_s=1, started_at="2026-11-30T20:00:00+00:00", models=[model_report(model, prompt, cases, 1.0)])


# (cases of one model, expected (ref, cases, run_cases, exact, json_valid, failed) per record)
CASES = [
    pytest.param([_case(1, "s@v1", RIGHT), _case(2, "s@v1", WRONG)], [("s@v1", 2, 2, 0.5, 1.0, 0)], id="one-version"),
    pytest.param(
        [_case(1, "s@v1", RIGHT), _case(2, "s@v2", WRONG), _case(3, "s@v1", RIGHT), _case(4, "s@v2", "not json")],
        [("s@v1", 2, 4, 1.0, 1.0, 0), ("s@v2", 2, 4, 0.0, 0.5, 0)], id="canary-split-scored-apart",
    ),
    pytest.param([_case(1, "s@v1", RIGHT), _case(2, "base", WRONG)], [("s@v1", 1, 2, 1.0, 1.0, 0)], id="fallback-answer-not-counted"),
    pytest.param([_case(1, "s@v1", RIGHT), _case(2, "s@v1", None), _case(3, None, None)],
                 [("s@v1", 2, 3, 0.5, 0.5, 1)], id="failure-with-header-counts-without-does-not"),
    pytest.param([_case(1, None, RIGHT), _case(2, None, RIGHT)], [], id="no-gateway-nothing-to-record"),
    pytest.param([_case(1, "base", RIGHT)], [], id="base-model-only"),
]


@pytest.mark.parametrize("cases, expected", CASES)
def test_version_records(cases: list[CaseResult], expected: list[tuple]) -> None:
    records = version_records(_report("support", cases), "dev.jsonl", "ab" * 32)
    got = [(r.ref, r.cases, r.run_cases, r.summary.exact, r.summary.json_valid, r.summary.failed) for r in records]
    assert got == expected
    for r in records:
        assert (r.model, r.data_name, r.data_sha256, r.started_at) == ("support", "dev.jsonl", "ab" * 32, "2026-11-30T20:00:00+00:00")
        assert set(r.summary.fields) == {"category"} and r.summary.fields["category"] == r.summary.exact


def test_latency_and_prompt_are_the_versions_own() -> None:
    cases = [_case(1, "s@v1", RIGHT, latency=1.0), _case(2, "s@v2", RIGHT, latency=9.0), _case(3, "s@v1", RIGHT, latency=3.0)]
    v1, v2 = version_records(_report("s", cases, prompt="answer in JSON"), "d.jsonl", "0" * 64)
    assert (v1.summary.latency_p50_s, v2.summary.latency_p50_s) == (2.0, 9.0)
    assert v1.summary.system_prompt and v2.summary.system_prompt
