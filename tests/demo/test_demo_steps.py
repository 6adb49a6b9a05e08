"""The demo's pure decisions: when a step's output is reused, when canary traffic may stop, what it prints to copy."""

from __future__ import annotations

import shlex
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from lorafleet.config import TrainConfig
from lorafleet.demo.quickstart import run_length
from lorafleet.demo.steps import StepLog, can_reuse, files_key, text_key, write_stamp
from lorafleet.demo.traffic import canary_done, usage_snippet

V1, V2 = "support@v1", "support@v2"


@pytest.mark.parametrize(
    ("seen", "sent", "planned", "cap", "done"),
    [
        (Counter(), 0, 40, 200, False),                  # nothing sent yet
        (Counter({V1: 36, V2: 4}), 40, 40, 200, True),   # planned reached, both versions answered
        (Counter({V1: 10, V2: 2}), 12, 40, 200, False),  # both answered but fewer than planned
        (Counter({V1: 40}), 40, 40, 200, False),         # the canary has not answered yet: keep going
        (Counter({V1: 200}), 200, 40, 200, True),        # the cap ends it whatever happened
        (Counter({V1: 39, V2: 1}), 40, 40, 40, True),
    ],
)
def test_canary_traffic_stops_when_planned_and_both_versions_answered(seen, sent, planned, cap, done) -> None:
    assert canary_done(seen, sent, planned, cap, [V1, V2]) is done


def test_reuse_needs_an_intact_output_and_the_same_key(tmp_path: Path) -> None:
    stamp = tmp_path / "prepared.key"
    assert not can_reuse(stamp, "abc", output_ok=True)  # no stamp: never made by the demo
    write_stamp(stamp, "abc")
    assert can_reuse(stamp, "abc", output_ok=True)
    assert not can_reuse(stamp, "abd", output_ok=True)  # inputs changed
    assert not can_reuse(stamp, "abc", output_ok=False)  # output damaged or missing


def test_keys_change_with_any_input(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("one\n")
    b.write_text("two\n")
    key = files_key([a, b], {"max_seq_length": 1024})
    assert files_key([a, b], {"max_seq_length": 1024}) == key
    assert files_key([a, b], {"max_seq_length": 512}) != key
    assert files_key([b, a], {"max_seq_length": 1024}) != key
    a.write_text("one!\n")
    assert files_key([a, b], {"max_seq_length": 1024}) != key
    assert text_key("ab", "c") != text_key("a", "bc")


def test_usage_snippet_is_a_runnable_curl_line_even_with_quotes() -> None:
    ticket = "I can't log in since Monday"
    snippet = usage_snippet("http://127.0.0.1:8123", "support", ticket)
    curl = snippet.splitlines()[0]
    argv = shlex.split(curl)
    assert argv[:3] == ["curl", "-s", "http://127.0.0.1:8123/v1/chat/completions"]
    assert ticket in argv[-1] and '"model": "support"' in argv[-1]
    assert 'base_url="http://127.0.0.1:8123/v1"' in snippet and 'model="support"' in snippet


def test_step_log_prints_each_step_and_its_time() -> None:
    console = Console(record=True, width=120)
    log = StepLog(console, total=2)
    with log.step("prepare", "validate every line"):
        pass
    with log.step("train v1", "LoRA on the CPU") as step:
        step.reused = True
    text = console.export_text()
    assert "1/2 prepare" in text and "2/2 train v1" in text
    assert "train v1: " in text and "(reused from an earlier run)" in text
    console.print(log.table())
    assert [s.title for s in log.steps] == ["prepare", "train v1"]
    assert "total" in console.export_text()


def test_examples_show_each_models_answer_cut_short_and_failures_by_status() -> None:
    from lorafleet.demo.traffic import examples_table
    from lorafleet.eval.report import CaseResult, EvalReport, ModelReport

    expected = {"category": "billing", "priority": "high"}
    long_answer = "[not markup] " + "word " * 200
    models = [
        ModelReport(model="base", requests=1, scored=1, cases=[CaseResult(line=1, status="ok", answer=long_answer, expected=expected)]),
        ModelReport(model="support", requests=1, scored=1, cases=[CaseResult(line=1, status="timeout", expected=expected)]),
    ]
    report = EvalReport(endpoint="http://gw", data="dev.jsonl", lines=1, temperature=0, max_tokens=8, concurrency=1,
                        timeout_s=1, started_at="2026-11-30T00:00:00+00:00", models=models)
    console = Console(record=True, width=400)
    console.print(examples_table(report, 3, longest=40))
    text = console.export_text()
    assert "category=billing, priority=high" in text
    assert "[not markup] word word" in text and "…" in text and "word " * 10 not in text
    assert "(timeout)" in text


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"max_steps": 16}, "16 steps"),                 # configs/demo.yaml: a step budget
        ({"epochs": 1}, "1 epoch"),                      # configs/triage.yaml: one pass, steps counted by train
        ({"epochs": 3}, "3 epochs"),
        ({"epochs": 2, "max_steps": 5}, "5 steps"),      # max_steps overrides epochs, as in train
    ],
)
def test_a_version_says_how_long_it_trains(fields: dict, said: str) -> None:
    assert run_length(TrainConfig(**fields)) == said
