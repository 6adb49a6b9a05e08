"""`lorafleet adapters …` through Typer's CliRunner: every command, human and --json output, errors exit 2."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from lorafleet.cli import app

runner = CliRunner()


def _run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, ["adapters", *args])
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result.stdout if code == 0 else result.stderr


def _json(*args: str) -> object:
    return json.loads(_run(*args, "--json"))


def test_every_command_with_json_and_human_output(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    assert _json("init", "--model", str(tiny_model))["name"] == str(tiny_model.resolve())
    assert "registry base model" in _run("init", "--model", str(tiny_model))
    assert _run("push", str(make_artifact(seed=0)), "--name", "support").strip() == "support@v1"
    pushed = _json("push", str(make_artifact(seed=1)), "--name", "support")
    assert pushed["ref"] == "support@v2" and pushed["content_reused"] is False

    assert [row["ref"] for row in _json("list")] == ["support@v1", "support@v2"]
    assert "support@v2" in _run("list")
    shown = _json("show", "support")
    assert shown["summary"]["ref"] == "support@v2" and "adapter_model.safetensors" in shown["checksums"]
    assert "adapter_config.json" in _run("show", "support@v1")

    canary = _json("alias", "set", "chat", "support@v1=90", "support@v2=10", "--fallback-prompt", "Be brief.")
    assert [(r["name"], r["version"], r["weight"]) for r in canary["routes"]] == [("support", 1, 90), ("support", 2, 10)]
    assert canary["fallback_prompt"] == "Be brief."
    assert "chat=90" in _run("list")
    assert "support@v2=100" in _run("promote", "chat", "support@v2")
    assert _json("rollback", "chat")["action"] == "rollback"
    assert [r["action"] for r in _json("history", "chat")] == ["set", "promote", "rollback"]
    assert "promote" in _run("history", "chat")

    _run("promote", "chat", "support@v1")  # the rollback restored the canary; move all traffic off v2
    assert _run("rm", "support@v2").strip() == "removed support@v2"
    assert [row["ref"] for row in _json("list")] == ["support@v1"]

def test_errors_exit_2_with_the_message_on_stderr(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    _run("init", "--model", str(tiny_model))
    _run("push", str(make_artifact()), "--name", "support")
    _run("alias", "set", "chat", "support@v1")
    assert "routed to by alias(es) chat=100" in _run("rm", "support@v1", code=2)
    assert "sum to 50" in _run("alias", "set", "chat", "support@v1=50", code=2)
    assert "path separator" in _run("push", str(make_artifact()), "--name", "../x", code=2)
    assert "no adapter version support@v9" in _run("show", "support@v9", code=2)
    assert "first routing" in _run("rollback", "chat", code=2)
    bad = make_artifact()
    (bad / "evil.py").write_text("print('hi')\n")
    assert "evil.py" in _run("push", str(bad), "--name", "support", code=2)


def test_errors_quote_what_the_user_typed_as_text(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    """Brackets in a name or path are printed as typed: not read as rich markup (dropped, or a crash on `[/x]`)."""
    _run("init", "--model", str(tiny_model))
    assert "adapter name '[/x]' contains a path separator" in " ".join(_run("push", str(make_artifact()), "--name", "[/x]",
                                                                               code=2).split())
    said = " ".join(_run("push", str(make_artifact()), "--name", "[b]x", code=2).split())
    assert "adapter name '[b]x' does not match [a-z0-9][a-z0-9._-]{0,62}" in said
    assert "no[bold]where is not a folder" in " ".join(_run("push", "no[bold]where", "--name", "x", code=2).split())
    _run("push", str(make_artifact()), "--name", "support")
    _run("alias", "set", "chat", "support@v1", "--fallback-prompt", "[/sys] Be [b]brief[/b].")
    history = _run("history", "chat")  # the table wraps the cell
    assert "[/sys] Be" in history and "[b]brief[/b]." in history


def test_gc_command(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    _run("init", "--model", str(tiny_model))
    _run("push", str(make_artifact()), "--name", "support")
    _run("rm", "support@v1")
    assert len(_json("gc")["removed"]) == 1
    assert "removed 0" in _run("gc")


def test_restamp_command(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    from lorafleet.fingerprints import base_fingerprints
    from registry_artifacts import reseal

    _run("init", "--model", str(tiny_model))
    artifact = make_artifact()
    fingerprints = base_fingerprints(tiny_model)
    reseal(artifact, format_version=1, base_fingerprint=fingerprints.legacy_model)
    assert "lorafleet adapters restamp" in _run("push", str(artifact), "--name", "support", code=2)
    restamped = _json("restamp", str(artifact))
    assert (restamped["old_base_fingerprint"], restamped["base_fingerprint"]) == (fingerprints.legacy_model, fingerprints.model)
    assert _run("push", str(artifact), "--name", "support").strip() == "support@v1"
    assert "nothing to restamp" in _run("restamp", str(artifact), code=2)
