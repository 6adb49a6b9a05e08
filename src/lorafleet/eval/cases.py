"""Reading an eval data file: one JSON object per line, each a conversation to send and what to expect back.

    {"messages": [{"role": "user", "content": "..."}], "expected": {"category": "billing"}, "required": ["reply"]}

`messages` is the OpenAI chat format; a trailing assistant message (a training line evaluated as it
is) is dropped before sending. `expected` (field -> JSON value, compared exactly) and `required`
(fields that must be present and non-empty) are optional; a line with neither is sent and timed but
not scored. Other keys are ignored. Unlike `prepare`, eval refuses a file with any bad line: a
scorecard over part of a test set would be misleading, so every problem is listed with its line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

MAX_LISTED_PROBLEMS = 10
PromptPlace = Literal["system", "user"]


class EvalDataError(ValueError):
    """The data file cannot be evaluated; the message names each bad line and what is wrong with it."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class _Line(BaseModel):
    model_config = ConfigDict(extra="ignore")
    messages: list[_Message] = Field(min_length=1)
    expected: dict[str, Any] = Field(default_factory=dict)
    required: list[StrictStr] = Field(default_factory=list)


@dataclass(frozen=True)
class EvalCase:
    """One conversation to send and what its answer is scored against."""

    line: int
    messages: tuple[dict[str, str], ...]  # ends with a user message
    expected: dict[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    @property
    def scored(self) -> bool:
        return bool(self.expected or self.required)

    def with_prompt(self, prompt: str | None, place: PromptPlace = "system") -> list[dict[str, str]]:
        """The messages to send with `prompt` added; None leaves them as they are.

        place "system": `prompt` replaces a leading system message or is put first as one.
        place "user": `prompt` goes in front of the first user message, in the same turn (for models
        that pay little attention to system messages); a system message in the data is kept.
        """
        messages = list(self.messages)
        if prompt is None:
            return messages
        if place == "user":
            first = next(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[first] = {"role": "user", "content": f"{prompt}\n\n{messages[first]['content']}"}
            return messages
        if messages[0]["role"] == "system":
            messages = messages[1:]
        return [{"role": "system", "content": prompt}, *messages]


def parse_case(text: str, line: int) -> EvalCase:
    """One line of an eval file as a case; raises ValueError saying what is wrong (without the line number)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object with a `messages` list")
    try:
        parsed = _Line.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}: {first['msg']}") from None
    messages = [m.model_dump() for m in parsed.messages]
    if messages[-1]["role"] == "assistant":
        messages.pop()  # the reference answer of a training line; the model must produce its own
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message (before any final assistant message)")
    return EvalCase(line, tuple(messages), parsed.expected, tuple(parsed.required))


def load_cases(path: Path, limit: int | None = None) -> list[EvalCase]:
    """The cases of the JSONL file at `path` (blank lines skipped), the first `limit` if given.

    Raises EvalDataError listing the bad lines (up to MAX_LISTED_PROBLEMS) or saying the file has no cases.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"cannot read eval data {path}: {exc}") from None
    cases: list[EvalCase] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            cases.append(parse_case(raw, number))
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
        if limit is not None and len(cases) >= limit:
            break
    if problems:
        more = f" (and {len(problems) - MAX_LISTED_PROBLEMS} more)" if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise EvalDataError(f"{path}: {len(problems)} bad line(s){more}:\n  " + "\n  ".join(problems[:MAX_LISTED_PROBLEMS]))
    if not cases:
        raise EvalDataError(f"{path} holds no conversations to evaluate")
    return cases
