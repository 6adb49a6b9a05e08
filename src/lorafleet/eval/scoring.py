"""Scoring answers, pure functions only: parse an answer, compare it with the expected fields, aggregate.

The contract an answer is held to: after stripping one enclosing Markdown code fence (```json ... ```)
and surrounding whitespace, the text must be exactly one JSON object. Each expected field must be
present with an equal value of the same JSON type ("1" is not 1, true is not 1). A failed request
(timeout, connection error, HTTP error) scores like an answer that is not JSON: wrong on every field.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from lorafleet.eval.report import INVALID, MISSING, OTHER, CaseResult, CaseScore, Confusion, FieldAccuracy, Latency, ModelReport
from lorafleet.percentiles import percentile

_FENCE = re.compile(r"^```[\w-]*[ \t]*\n?(.*?)\n?[ \t]*```$", re.DOTALL)
CATEGORICAL_MAX_LABELS = 20  # a string field with more distinct expected values is free text, not a label


def strip_fences(text: str) -> str:
    """`text` without surrounding whitespace and without one code fence enclosing all of it."""
    text = text.strip()
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text


def parse_answer(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object, None) when `text` is exactly one JSON object after strip_fences, else (None, why)."""
    body = strip_fences(text)
    if not body:
        return None, "empty answer"
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except RecursionError:
        return None, "JSON nested too deeply"
    if not isinstance(value, dict):
        return None, f"a JSON {_json_type(value)}, not an object"
    return value, None


def same_value(expected: Any, actual: Any) -> bool:
    """Equal as JSON values, type included: Python's True == 1 does not count; 1 and 1.0 are one JSON number."""
    if _json_type(expected) != _json_type(actual):
        return False
    if isinstance(expected, dict):
        return expected.keys() == actual.keys() and all(same_value(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return len(expected) == len(actual) and all(same_value(e, a) for e, a in zip(expected, actual))
    return expected == actual


def score_answer(answer: str | None, expected: dict[str, Any], required: Sequence[str] = ()) -> CaseScore:
    """Score one answer (None = the request failed) against `expected` values and `required` field names."""
    obj, error = parse_answer(answer) if answer is not None else (None, "no answer: the request failed")
    if obj is None:
        return CaseScore(
            json_valid=False, schema_valid=False, fields={k: False for k in expected}, exact=False, parse_error=error
        )
    fields = {k: k in obj and same_value(v, obj[k]) for k, v in expected.items()}
    present = all(k in obj for k in [*expected, *required]) and all(_filled(obj[k]) for k in required)
    return CaseScore(
        json_valid=True, schema_valid=present, fields=fields, exact=all(fields.values()),
        predicted={k: obj[k] for k in expected if k in obj},
    )




def categorical_fields(cases: Sequence[CaseResult]) -> list[str]:
    """Expected fields whose values are all strings with at most CATEGORICAL_MAX_LABELS distinct values."""
    values: dict[str, set[Any]] = {}
    for case in cases:
        for key, value in case.expected.items():
            values.setdefault(key, set()).add(value if isinstance(value, str) else (None, repr(value)))
    return sorted(k for k, v in values.items() if all(isinstance(x, str) for x in v) and len(v) <= CATEGORICAL_MAX_LABELS)


def confusion(field: str, cases: Sequence[CaseResult]) -> Confusion:
    """Expected against predicted labels of `field`; predictions outside the expected labels count as OTHER."""
    scored = [c for c in cases if field in c.expected]
    labels = sorted({c.expected[field] for c in scored})
    counts: dict[str, Counter[str]] = {label: Counter() for label in labels}
    for case in scored:
        counts[case.expected[field]][_predicted_label(case, field, labels)] += 1
    return Confusion(field=field, labels=labels, counts={k: dict(sorted(v.items())) for k, v in counts.items()})


def _predicted_label(case: CaseResult, field: str, labels: list[str]) -> str:
    if case.score is None or not case.score.json_valid:
        return INVALID
    if field not in case.score.predicted:
        return MISSING
    value = case.score.predicted[field]
    return value if isinstance(value, str) and value in labels else OTHER


def model_report(model: str, system_prompt: str | None, cases: list[CaseResult], wall_s: float) -> ModelReport:
    """Aggregate one model's case results; failed requests stay in every denominator."""
    scored = [c for c in cases if c.score is not None]
    field_names = sorted({k for c in scored for k in c.expected})
    latencies = [c.latency_s for c in cases if c.status == "ok" and c.latency_s is not None]
    return ModelReport(
        model=model,
        system_prompt=system_prompt,
        requests=len(cases),
        failures=dict(sorted(Counter(c.status for c in cases if c.status != "ok").items())),
        scored=len(scored),
        json_valid=sum(c.score.json_valid for c in scored),
        schema_valid=sum(c.score.schema_valid for c in scored),
        exact=sum(c.score.exact for c in scored),
        fields=[
            FieldAccuracy(
                field=name,
                correct=sum(c.score.fields.get(name, False) for c in scored),
                total=sum(name in c.expected for c in scored),
            )
            for name in field_names
        ],
        confusion=[confusion(name, scored) for name in categorical_fields(scored)],
        latency=Latency(
            p50=percentile(latencies, 50), p95=percentile(latencies, 95),
            mean=sum(latencies) / len(latencies) if latencies else None, max=max(latencies, default=None),
        ),
        completion_tokens=sum(c.completion_tokens or 0 for c in cases),
        wall_s=wall_s,
        cases=cases,
    )


def _filled(value: Any) -> bool:
    """A required field counts as given unless it is null or an empty or blank string."""
    return value is not None and not (isinstance(value, str) and not value.strip())


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
