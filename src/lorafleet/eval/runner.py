"""`evaluate`: read the cases → send them to each model in turn → score every answer → one report.

Models are evaluated one after the other, never interleaved, so each one's latency is its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from lorafleet.eval.cases import EvalCase, PromptPlace, load_cases
from lorafleet.eval.client import Outcome, RequestSettings, send_all
from lorafleet.eval.report import CaseResult, EvalReport, ModelReport
from lorafleet.eval.scoring import model_report, score_answer


class Target(BaseModel):
    """One model to evaluate, and the system prompt put in front of every conversation sent to it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="the `model` of each request: an alias, an adapter or the base model")
    system_prompt: str | None = Field(None, description="instructions added to every conversation; None sends the data's own")
    prompt_in: PromptPlace = Field(
        "system", description="system: the prompt is the system message; user: it goes in front of the first user message"
    )


class EvalOptions(BaseModel):
    """Everything `lorafleet eval` needs besides the progress display."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(min_length=1, description="OpenAI-compatible server: http://host:port or its /v1 base URL")
    data: Path = Field(description="JSONL file of conversations with `expected` fields")
    targets: list[Target] = Field(min_length=1, description="models to evaluate, in this order")
    api_key: str | None = Field(None, description="sent as a Bearer token when given")
    temperature: float = Field(0.0, ge=0, description="0 = greedy decoding")
    max_tokens: int = Field(160, ge=1, description="longest answer generated per request")
    timeout_s: float = Field(120.0, gt=0, description="deadline per request; a later answer is a timeout failure")
    concurrency: int = Field(8, ge=1, le=1024, description="requests in flight at once")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N conversations")


# Called after each request with (model, requests done for it, requests in all for it).
ProgressHook = Callable[[str, int, int], None]


def evaluate(options: EvalOptions, on_progress: ProgressHook | None = None) -> EvalReport:
    """Evaluate every target on the data file and return the report.

    Raises EvalDataError (bad data file) before any request is sent; request failures never raise,
    they are scored as failures and counted in the report.
    """
    cases = load_cases(options.data, options.limit)
    settings = RequestSettings(
        endpoint=options.endpoint, api_key=options.api_key, temperature=options.temperature,
        max_tokens=options.max_tokens, timeout_s=options.timeout_s, concurrency=options.concurrency,
    )
    started = datetime.now(UTC).isoformat(timespec="seconds")
    reports = [evaluate_target(cases, target, settings, on_progress) for target in options.targets]
    return EvalReport(
        endpoint=options.endpoint, data=str(options.data), lines=len(cases), temperature=options.temperature,
        max_tokens=options.max_tokens, concurrency=options.concurrency, timeout_s=options.timeout_s,
        started_at=started, models=reports,
    )


def evaluate_target(
    cases: list[EvalCase], target: Target, settings: RequestSettings, on_progress: ProgressHook | None = None
) -> ModelReport:
    """Send every case to one model and score the answers."""
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(target.model, done, len(cases))

    conversations = [case.with_prompt(target.system_prompt, target.prompt_in) for case in cases]
    outcomes, wall_s = asyncio.run(send_all(target.model, conversations, settings, tick))
    results = [case_result(case, outcome) for case, outcome in zip(cases, outcomes)]
    report = model_report(target.model, target.system_prompt, results, wall_s)
    report.prompt_in = target.prompt_in if target.system_prompt is not None else None
    return report


def case_result(case: EvalCase, outcome: Outcome) -> CaseResult:
    """One case's outcome with its score; a failed request scores as no answer at all."""
    score = None
    if case.scored:
        score = score_answer(outcome.answer if outcome.status == "ok" else None, case.expected, case.required)
    return CaseResult(
        line=case.line, status=outcome.status, error=outcome.error, http_status=outcome.http_status,
        latency_s=outcome.latency_s, completion_tokens=outcome.completion_tokens, answer=outcome.answer,
        expected=case.expected, score=score, adapter=outcome.adapter,
    )
