"""Progress where nobody watches a terminal: plain lines at a steady cadence (pure rules, and the CLI)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafleet.cli import app
from lorafleet.train.progress import LINE_INTERVAL_S, clock, line_due, line_every, progress_line


@pytest.mark.parametrize(("step", "first", "total", "since", "due"), [
    (1, 0, 1000, 0.0, True),  # the first step of a run
    (51, 50, 1000, 0.0, True),  # the first step after a resume
    (2, 0, 1000, 0.0, False),
    (50, 0, 1000, 0.0, True),  # every total // 20 steps
    (51, 0, 1000, 0.0, False),
    (51, 0, 1000, LINE_INTERVAL_S, True),  # and at least every 30 s
    (1000, 0, 1000, 0.0, True),  # the last step
    (7, 0, 10, 0.0, True),  # short runs: every step
])
def test_when_a_line_is_due(step, first, total, since, due):
    assert line_due(step, first, total, since) is due


def test_lines_per_run():
    assert [line_every(n) for n in (1, 19, 20, 1000, 100_000)] == [1, 1, 1, 50, 5000]


def test_a_line_says_where_the_run_is_and_how_long_it_has_left():
    line = progress_line(step=30, total_steps=100, loss=1.23456, lr=2e-4, tokens_per_s=12345.6, elapsed_s=90.0,
                         steps_done=30)
    assert line == "step 30/100  loss 1.2346  lr 2.00e-04  12,346 tok/s  elapsed 0:01:30  eta 0:03:30"
    assert clock(3 * 3600 + 61) == "3:01:01"


def test_cli_without_a_terminal_prints_plain_progress(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "a"), "--model",
                                      str(tiny_model), "--max-steps", "3", "--no-gradient-checkpointing",
                                      "--set", "speedups.micro_batch=2", "--set", "lora_r=4"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if re.match(r"step \d+/\d+ ", line)]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"], result.output
    assert all(" loss " in line and " eta " in line for line in lines)
    assert "step 3: eval loss" in result.output
    assert "speed-ups: plain transformers + PEFT path" in result.output and "micro-batch 2 of 4 rows" in result.output


def test_cli_set_names_a_bad_key(tiny_data: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "a"),
                                      "--set", "speedups.cuda_graph=false"])
    assert result.exit_code == 2 and "speedups.cuda_graph" in result.output
