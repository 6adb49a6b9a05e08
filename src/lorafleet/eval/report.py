"""The typed results of `lorafleet eval`: one `CaseResult` per line and model, one `ModelReport` per model.

Everything here is a pydantic model, so a report round-trips through JSON (`--json`, a file next to an
artifact, the web console) without losing its shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# How a request ended. Anything but "ok" is a failure: it is scored wrong on every field and counted.
Status = Literal["ok", "timeout", "connection_error", "http_error", "bad_response"]
MISSING = "(missing)"  # confusion-table column: the answer was a JSON object without the field
INVALID = "(invalid)"  # the answer was not one JSON object, or the request failed
OTHER = "(other)"  # a value that is not one of the field's expected labels


class CaseScore(BaseModel):
    """How one answer scored against its line's `expected` and `required` fields."""

    json_valid: bool = Field(description="the answer, code fences stripped, is exactly one JSON object")
    schema_valid: bool = Field(description="json_valid and every expected and required field is present")
    fields: dict[str, bool] = Field(default_factory=dict, description="expected field -> value equal (type included)")
    exact: bool = Field(description="every expected field is right")
    predicted: dict[str, Any] = Field(default_factory=dict, description="expected field -> the answer's value (absent if missing)")
    parse_error: str | None = Field(None, description="why the answer is not valid JSON, when it is not")


class CaseResult(BaseModel):
    """One line of the data file sent to one model."""

    line: int = Field(description="1-based line number in the data file")
    status: Status
    error: str | None = Field(None, description="what went wrong, for a failed request")
    http_status: int | None = None
    latency_s: float | None = Field(None, description="request wall time; None when no response came back")
    completion_tokens: int | None = None
    answer: str | None = Field(None, description="the assistant's text (first 2,000 characters)")
    adapter: str | None = Field(None, description="who answered, from the lorafleet gateway's x-lorafleet-adapter header: "
                                                 "NAME@vN, or the base model's name (None from other servers)")
    expected: dict[str, Any] = Field(default_factory=dict)
    score: CaseScore | None = Field(None, description="None for lines without `expected` or `required`")


class Confusion(BaseModel):
    """Counts of expected label (rows) against predicted label (columns) for one categorical field."""

    field: str
    labels: list[str] = Field(description="the expected labels, sorted; predicted columns are these plus special ones")
    counts: dict[str, dict[str, int]] = Field(description="expected -> predicted -> count (zeros omitted)")


class FieldAccuracy(BaseModel):
    field: str
    correct: int
    total: int

    @property
    def rate(self) -> float:
        return self.correct / self.total if self.total else 0.0


class Latency(BaseModel):
    """Seconds per completed request."""

    p50: float | None = None
    p95: float | None = None
    mean: float | None = None
    max: float | None = None


class ModelReport(BaseModel):
    """Everything measured for one model on one data file."""

    model: str
    system_prompt: str | None = Field(None, description="the instructions put in every conversation, if any")
    prompt_in: Literal["system", "user"] | None = Field(
        None, description="where the instructions went: the system message, or in front of the first user message"
    )
    requests: int = Field(description="lines sent, failed ones included")
    failures: dict[str, int] = Field(default_factory=dict, description="failed requests by status")
    scored: int = Field(description="lines with `expected` or `required` fields (failures included, as wrong)")
    json_valid: int = 0
    schema_valid: int = 0
    exact: int = 0
    fields: list[FieldAccuracy] = Field(default_factory=list)
    confusion: list[Confusion] = Field(default_factory=list)
    latency: Latency = Field(default_factory=Latency)
    completion_tokens: int = 0
    wall_s: float = Field(0.0, description="time from the first request sent to the last answer received")
    cases: list[CaseResult] = Field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def rate(self, count: int) -> float:
        """`count` as a share of the scored lines."""
        return count / self.scored if self.scored else 0.0

    def field_rate(self, name: str) -> float | None:
        return next((f.rate for f in self.fields if f.field == name), None)


class EvalReport(BaseModel):
    """One `lorafleet eval` run: the settings that matter for comparing runs, and a report per model."""

    endpoint: str
    data: str = Field(description="the data file evaluated")
    lines: int
    temperature: float
    max_tokens: int
    concurrency: int
    timeout_s: float
    started_at: str = Field(description="UTC time, ISO 8601")
    models: list[ModelReport]
