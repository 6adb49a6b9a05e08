"""`lorafleet prepare` through the CLI: exit codes, messages on stderr, the summary, --json."""

from __future__ import annotations

import json
from pathlib import Path

from chat_files import chat, write_cut_gzip, write_jsonl
from typer.testing import CliRunner

from lorafleet.cli import app


def run(*args: str):
    return CliRunner().invoke(app, ["prepare", *args])


def test_prepare_prints_summary_and_histogram(tiny_model: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat(f"q{i}", f"a{i}") for i in range(20)])
    result = run(str(path), "--out", str(tmp_path / "out"), "--model", str(tiny_model))
    assert result.exit_code == 0, result.output
    assert "accepted" in result.stdout and "tokens per sample" in result.stdout and "█" in result.stdout
    assert (tmp_path / "out" / "train.parquet").is_file()


def test_json_output_is_the_report_alone_on_stdout(tiny_model: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat("q", "a"), chat("q", "a")])
    result = run(str(path), "--out", str(tmp_path / "out"), "--model", str(tiny_model), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["accepted"] == 1 and report["duplicates"] == 1


def test_error_rate_over_threshold_exits_nonzero_naming_rate_and_threshold(tiny_model: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat("q", "a"), "garbage", chat("r", "b")])
    result = run(str(path), "--out", str(tmp_path / "out"), "--model", str(tiny_model), "--max-error-rate", "0.2")
    assert result.exit_code == 1
    assert "error rate 33.33%" in result.stderr and "--max-error-rate 20.00%" in result.stderr
    assert (tmp_path / "out" / "report.json").is_file() and (tmp_path / "out" / "rejected.jsonl").is_file()
    assert not (tmp_path / "out" / "train.parquet").exists()


def test_bad_options_and_inputs_fail_with_a_message(tiny_model: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat("q", "a")])
    result = run(str(path), "--out", str(tmp_path / "out"), "--model", "gpt-17")
    assert result.exit_code == 2 and "unknown model 'gpt-17'" in result.stderr
    result = run(str(path), "--out", str(tmp_path / "out"), "--model", str(tiny_model), "--on-overflow", "squash")
    assert result.exit_code == 2 and "--on-overflow" in result.stderr
    result = run(str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out"), "--model", str(tiny_model))
    assert result.exit_code == 2 and "not found" in result.stderr


def test_a_cut_off_gzip_exits_with_a_message_not_an_abort(tiny_model: Path, tmp_path: Path) -> None:
    path = write_cut_gzip(tmp_path / "cut.jsonl.gz")
    result = run(str(path), "--out", str(tmp_path / "out"), "--model", str(tiny_model))
    said = " ".join(result.stderr.split())  # the error console wraps long lines
    assert result.exit_code == 2 and "the gzip data is cut off or corrupt after line" in said, result.output
    assert not (tmp_path / "out").exists()


def test_an_empty_input_exits_nonzero_with_the_report(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    result = run(str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "out"), "--model", str(tiny_model))
    assert result.exit_code == 1 and "the inputs hold no lines" in result.stderr
    assert (tmp_path / "out" / "report.json").is_file() and not (tmp_path / "out" / "train.parquet").exists()
