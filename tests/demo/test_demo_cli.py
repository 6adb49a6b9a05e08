"""`lorafleet demo` refuses bad configs before doing any work, saying which file and which flag."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from lorafleet.cli import app


def test_missing_config_names_the_flag(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "out"), "--first-config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml (--first-config) not found" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_config_that_does_not_validate_stops_the_demo_with_its_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_r: -3\n")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "out"), "--config", str(bad)])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "demo stopped:" in text and "lora_r" in text
    assert not (tmp_path / "out" / "data").exists()  # refused before generating anything
