"""`lorafleet demo` end to end on the embedded model, with a shortened train config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from rich.console import Console

from lorafleet.demo.quickstart import ALIAS, FALLBACK_PROMPT, run_demo
from lorafleet.registry import service
from lorafleet.artifact import verify_artifact

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_demo_runs_the_whole_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config.update(max_steps=2, eval_every=1)  # the lifecycle, not the learning, is under test here
    short = tmp_path / "demo.yaml"
    short.write_text(yaml.safe_dump(config))
    console = Console(record=True, width=200)
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "ignored"))  # run_demo points it at its own folder

    versions = run_demo(tmp_path / "out", short, console)

    assert [v.ref for v in versions] == [f"{ALIAS}@v1", f"{ALIAS}@v2"]
    for v in versions:
        assert verify_artifact(v.artifact) == []
    revisions = service.history(ALIAS)
    assert [r.action for r in revisions] == ["set", "promote", "rollback", "promote"]
    assert [(r.ref, r.weight) for r in revisions[0].routes] == [(f"{ALIAS}@v1", 90), (f"{ALIAS}@v2", 10)]
    assert [(r.ref, r.weight) for r in revisions[-1].routes] == [(f"{ALIAS}@v2", 100)]
    assert revisions[-1].fallback_prompt == FALLBACK_PROMPT
    assert (tmp_path / "out" / "home" / "registry.db").is_file()
    text = console.export_text()
    assert "base model:" in text and f"{ALIAS}@v2 (from the registry store):" in text
    assert "demo results" in text
