"""Scoring of fixed answers: fences, invalid JSON, missing fields, wrong types, failures, confusion tables."""

from __future__ import annotations

import pytest

from lorafleet.eval.report import INVALID, MISSING, OTHER, CaseResult
from lorafleet.eval.scoring import (
    categorical_fields, confusion, model_report, parse_answer, percentile, same_value, score_answer, strip_fences,
)

EXPECTED = {"category": "billing", "priority": "high"}
GOOD = '{"category": "billing", "priority": "high", "reply": "Sorry, we will refund it."}'


@pytest.mark.parametrize(
    ("text", "stripped"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ('  {"a": 1}\n', '{"a": 1}'),
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ('```\n{"a": 1}\n```', '{"a": 1}'),
        ('```JSON {"a": 1}```', '{"a": 1}'),
        ('\n```json\n  {"a": 1}  \n```\n', '{"a": 1}'),
        ('Here it is:\n```json\n{"a": 1}\n```', 'Here it is:\n```json\n{"a": 1}\n```'),  # prose: not one fenced block
        ('```json\n{"a": 1}\n``` and more', '```json\n{"a": 1}\n``` and more'),
    ],
)
def test_strip_fences(text: str, stripped: str) -> None:
    assert strip_fences(text) == stripped


@pytest.mark.parametrize(
    ("text", "valid", "why"),
    [
        (GOOD, True, None),
        (f"```json\n{GOOD}\n```", True, None),
        ('{"category": "billing",}', False, "not valid JSON"),
        ('{"category": "billing"', False, "not valid JSON"),
        ("", False, "empty answer"),
        ("```json\n```", False, "empty answer"),
        ('[{"category": "billing"}]', False, "a JSON array, not an object"),
        ('"billing"', False, "a JSON string, not an object"),
        ("null", False, "a JSON null, not an object"),
        ('{"a": 1} {"b": 2}', False, "not valid JSON: Extra data"),
        (f"Sure! {GOOD}", False, "not valid JSON"),
        (f"{GOOD}\nHope this helps.", False, "not valid JSON: Extra data"),
    ],
)
def test_parse_answer(text: str, valid: bool, why: str | None) -> None:
    obj, error = parse_answer(text)
    assert (obj is not None) is valid
    if why is None:
        assert error is None
    else:
        assert error is not None and error.startswith(why)


@pytest.mark.parametrize(
    ("expected", "actual", "same"),
    [
        ("high", "high", True), ("high", "High", False), (1, 1, True), (1, 1.0, True), (1, "1", False),
        (True, 1, False), (1, True, False), (None, None, True), (None, "null", False),
        ([1, "a"], [1, "a"], True), ([1], [True], False), ({"a": [1]}, {"a": [1]}, True), ({"a": 1}, {"a": 1, "b": 2}, False),
    ],
)
def test_same_value_compares_json_types(expected: object, actual: object, same: bool) -> None:
    assert same_value(expected, actual) is same


@pytest.mark.parametrize(
    ("answer", "json_valid", "schema_valid", "fields", "exact"),
    [
        (GOOD, True, True, {"category": True, "priority": True}, True),
        (f"```json\n{GOOD}\n```", True, True, {"category": True, "priority": True}, True),
        ('{"category": "billing", "priority": "low", "reply": "ok"}', True, True, {"category": True, "priority": False}, False),
        ('{"category": "billing", "reply": "ok"}', True, False, {"category": True, "priority": False}, False),  # missing field
        ('{"category": "billing", "priority": 3, "reply": "ok"}', True, True, {"category": True, "priority": False}, False),
        ('{"category": ["billing"], "priority": "high", "reply": "ok"}', True, True, {"category": False, "priority": True}, False),
        ('{"category": "billing", "priority": "high"}', True, False, {"category": True, "priority": True}, True),  # no reply
        ('{"category": "billing", "priority": "high", "reply": "  "}', True, False, {"category": True, "priority": True}, True),
        ('{"category": "billing", "priority": "high", "reply": null}', True, False, {"category": True, "priority": True}, True),
        ('{"category": "billing", "priority": "high", "reply": "x"', False, False, {"category": False, "priority": False}, False),
        ("I think this is a billing issue with high priority.", False, False, {"category": False, "priority": False}, False),
        (None, False, False, {"category": False, "priority": False}, False),  # the request failed
    ],
)
def test_score_answer(answer: str | None, json_valid: bool, schema_valid: bool, fields: dict, exact: bool) -> None:
    score = score_answer(answer, EXPECTED, required=["reply"])
    assert (score.json_valid, score.schema_valid, score.fields, score.exact) == (json_valid, schema_valid, fields, exact)
    if not json_valid:
        assert score.parse_error and score.predicted == {}


def test_score_answer_keeps_predicted_values_of_expected_fields_only() -> None:
    score = score_answer('{"category": "shipping", "reply": "ok", "extra": 1}', EXPECTED)
    assert score.predicted == {"category": "shipping"}


@pytest.mark.parametrize(
    ("values", "q", "result"),
    [([], 50, None), ([3.0], 95, 3.0), ([1.0, 2.0], 50, 1.5), ([4.0, 1.0, 3.0, 2.0], 50, 2.5),
     ([float(i) for i in range(1, 101)], 95, 95.05), ([1.0, 2.0, 3.0], 100, 3.0), ([1.0, 2.0, 3.0], 0, 1.0)],
)
def test_percentile(values: list[float], q: float, result: float | None) -> None:
    assert percentile(values, q) == pytest.approx(result) if result is not None else percentile(values, q) is None


def _case(line: int, expected: dict, answer: str | None, status: str = "ok", latency: float | None = 0.5) -> CaseResult:
    return CaseResult(
        line=line, status=status, latency_s=latency if status == "ok" else None, answer=answer, expected=expected,
        score=score_answer(answer if status == "ok" else None, expected, ["reply"]), completion_tokens=10 if answer else None,
    )


CASES = [
    _case(1, {"category": "billing", "priority": "high"}, '{"category": "billing", "priority": "high", "reply": "a"}', latency=1.0),
    _case(2, {"category": "billing", "priority": "low"}, '{"category": "shipping", "priority": "low", "reply": "b"}', latency=2.0),
    _case(3, {"category": "shipping", "priority": "low"}, '{"category": "refund", "priority": "low", "reply": "c"}', latency=3.0),
    _case(4, {"category": "shipping", "priority": "medium"}, '{"priority": "medium", "reply": "d"}', latency=4.0),
    _case(5, {"category": "other", "priority": "low"}, "not json at all", latency=5.0),
    _case(6, {"category": "other", "priority": "high"}, None, status="timeout"),
    _case(7, {"category": "billing", "priority": "high"}, None, status="http_error"),
]


def test_confusion_table_counts_every_case_with_special_columns() -> None:
    table = confusion("category", CASES)
    assert table.labels == ["billing", "other", "shipping"]
    assert table.counts == {
        "billing": {"billing": 1, "shipping": 1, INVALID: 1},
        "shipping": {OTHER: 1, MISSING: 1},  # "refund" is not an expected label; case 4 has no category
        "other": {INVALID: 2},  # not JSON, and a failed request
    }
    assert sum(sum(row.values()) for row in table.counts.values()) == len(CASES)


def test_model_report_counts_failures_in_every_denominator() -> None:
    report = model_report("m", "be brief", CASES, wall_s=10.0)
    assert report.requests == 7 and report.scored == 7 and report.failed == 2
    assert report.failures == {"http_error": 1, "timeout": 1}
    assert report.json_valid == 4 and report.schema_valid == 3 and report.exact == 1
    accuracy = {f.field: (f.correct, f.total) for f in report.fields}
    assert accuracy == {"category": (1, 7), "priority": (4, 7)}
    assert report.field_rate("category") == pytest.approx(1 / 7)
    assert report.latency.p50 == pytest.approx(3.0) and report.latency.p95 == pytest.approx(4.8)  # ok requests only
    assert report.latency.max == 5.0 and report.completion_tokens == 50
    assert [c.field for c in report.confusion] == ["category", "priority"]
    assert report.model_validate_json(report.model_dump_json()) == report  # the web console reads it back


def test_free_text_and_non_string_fields_get_no_confusion_table() -> None:
    many = [_case(i, {"reply": f"text {i}", "count": i % 2}, "{}") for i in range(25)]
    assert categorical_fields(many) == []
    assert categorical_fields(CASES) == ["category", "priority"]


def test_lines_without_expectations_are_sent_but_not_scored() -> None:
    unscored = CaseResult(line=9, status="ok", latency_s=0.1, answer="hello", expected={}, score=None)
    report = model_report("m", None, [*CASES, unscored], wall_s=1.0)
    assert report.requests == 8 and report.scored == 7


def test_the_printed_report_shows_brackets_as_typed() -> None:
    """Labels, answers, model names and paths are text: rich would drop `[b]` from them and fail on `[/x]`."""
    from rich.console import Console

    from lorafleet.eval.render import print_report
    from lorafleet.eval.report import EvalReport

    cases = [_case(1, {"category": "[/x]"}, '{"category": "[/x]", "reply": "[/INST] hi"}'),
             _case(2, {"category": "[b]"}, "[/INST]"), _case(3, {"category": "[b]"}, None, status="http_error")]
    cases[2] = cases[2].model_copy(update={"error": "HTTP 500: [/oops]"})
    report = EvalReport(endpoint="http://h", data="d[/x].jsonl", lines=3, temperature=0.0, max_tokens=8, concurrency=1,
                        timeout_s=1.0, started_at="2026-12-01T00:00:00+00:00",
                        models=[model_report("[/m]", None, cases, wall_s=1.0)])
    console = Console(record=True, width=300)
    print_report(report, console, examples=3)
    text = console.export_text()
    for shown in ("d[/x].jsonl", "[/m]: category", "[b]", "[/x]", "[/INST] hi", "HTTP 500: [/oops]"):
        assert shown in text, shown
