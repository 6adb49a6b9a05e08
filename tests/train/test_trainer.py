"""train_adapter on the tiny random Llama: it learns, saves a PEFT artifact that plain PEFT loads, and verifies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from prepared_data import read_metrics, tiny_config
from safetensors.torch import load_file
from typer.testing import CliRunner

from lorafleet.cli import app
from lorafleet.models import tokenizer_fingerprint
from lorafleet.artifact import load_manifest, verify_artifact
from lorafleet.train.save import OutputError
from lorafleet.train.trainer import train_adapter


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "adapter"
    train_adapter(tiny_data, out, tiny_config(tiny_model, epochs=4, eval_every=4, max_grad_norm=1.0), show_progress=False)
    return out


def test_loss_goes_down(trained: Path):
    train = [r["loss"] for r in read_metrics(trained) if r["type"] == "train"]
    evals = [r["eval_loss"] for r in read_metrics(trained) if r["type"] == "eval"]
    assert len(train) == 16  # 16 samples / batch 4 × 4 epochs
    assert sum(train[-4:]) / 4 < sum(train[:4]) / 4 - 0.1, train
    assert min(evals) < evals[0], evals


def test_lora_b_matrices_trained(trained: Path):
    tensors = load_file(trained / "adapter_model.safetensors")
    b_mats = {k: v for k, v in tensors.items() if "lora_B" in k}
    assert len(b_mats) == 14  # 7 linear layers × 2 decoder layers
    assert all(v.abs().max() > 0 for v in b_mats.values())  # PEFT initializes B to zero


def test_artifact_loads_with_plain_peft_and_changes_logits(trained: Path, tiny_model: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 502, 3000, 42, 7, 9]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        before = base(ids).logits.clone()
        adapted = PeftModel.from_pretrained(base, trained).eval()
        after = adapted(ids).logits
    assert (after - before).abs().max() > 1e-3


def test_artifact_contents_and_manifest(trained: Path, tiny_model: Path, tiny_data: Path):
    names = sorted(p.name for p in trained.iterdir())
    assert names == sorted(
        ["adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "lorafleet.json",
         "metrics.jsonl", "tokenizer.json", "tokenizer_config.json"]
    )
    assert not list(trained.glob("*.bin")) and not list(trained.glob("*.pt"))  # never pickle
    assert not (trained.parent / "adapter.partial").exists()  # staging removed after success
    manifest = load_manifest(trained)
    assert set(manifest.files) == set(names) - {"lorafleet.json"}
    assert manifest.tokenizer_fingerprint == tokenizer_fingerprint(trained) == tokenizer_fingerprint(tiny_model)
    assert manifest.lora.r == 8 and manifest.lora.use_rslora and manifest.lora.quantization == "none"
    assert manifest.metrics.steps == 16 and manifest.metrics.tokens_seen > 0 and manifest.metrics.eval_loss is not None
    assert manifest.dataset.train_samples == 16 and manifest.dataset.eval_samples == 4
    assert {"torch", "transformers", "peft"} <= set(manifest.library_versions)
    config = json.loads((trained / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["r"] == 8
    assert verify_artifact(trained) == []


def test_keep_best_saves_the_lowest_eval_loss(trained: Path):
    evals = [r["eval_loss"] for r in read_metrics(trained) if r["type"] == "eval"]
    assert load_manifest(trained).metrics.eval_loss == pytest.approx(min(evals))


def test_verify_cli_ok_and_tampered(trained: Path, tmp_path: Path):
    import shutil

    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(trained)])
    assert ok.exit_code == 0 and "OK" in ok.output
    copy = shutil.copytree(trained, tmp_path / "tampered")
    weights = copy / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    bad = runner.invoke(app, ["verify", str(copy)])
    assert bad.exit_code == 1
    assert "adapter_model.safetensors: sha256" in bad.output


def test_refuses_to_overwrite_without_force(trained: Path, tiny_model: Path, tiny_data: Path):
    with pytest.raises(OutputError, match="exists and is not empty; pass --force"):
        train_adapter(tiny_data, trained, tiny_config(tiny_model, max_steps=1), show_progress=False)


def test_force_replaces_and_early_stopping(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "old.txt").write_text("previous contents")
    # lr so small that no eval beats the first by min_delta: patience 2 stops at step 3 of the 8 planned
    config = tiny_config(
        tiny_model, epochs=2, lr=1e-9, eval_every=1, early_stopping_patience=2, early_stopping_min_delta=1e-3, force=True
    )
    manifest = train_adapter(tiny_data, out, config, show_progress=False)
    assert not (out / "old.txt").exists()
    assert manifest.metrics.steps == 3
    assert [r["step"] for r in read_metrics(out) if r["type"] == "eval"] == [1, 2, 3]


def test_cli_train_with_config_and_overrides(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    config = tmp_path / "train.yaml"
    config.write_text(f"model: {tiny_model}\nlora_r: 4\nlora_alpha: 8\nbatch_size: 8\ngradient_checkpointing: false\n")
    out = tmp_path / "cli-adapter"
    result = CliRunner().invoke(
        app, ["train", "--data", str(tiny_data), "--out", str(out), "--config", str(config), "--max-steps", "2",
              "--lora-r", "2", "--target-modules", "q_proj,v_proj", "--no-rslora", "--max-memory", "64"],
    )
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    assert manifest.lora.r == 2 and manifest.lora.alpha == 8  # flag beats file, file beats default
    assert manifest.lora.target_modules == ["q_proj", "v_proj"] and not manifest.lora.use_rslora
    assert manifest.metrics.steps == 2


def test_cli_refuses_a_memory_budget_that_is_not_positive(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "x"), "--model",
                                      str(tiny_model), "--max-memory", "0"])
    assert result.exit_code == 2 and "max_memory_gb" in result.output, result.output
    assert not (tmp_path / "x").exists()


def test_cli_preflight_refusal_exits_nonzero(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    result = CliRunner().invoke(
        app, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "x"), "--model", str(tiny_model), "--quantization", "nf4", "--precision", "fp16"],
    )
    assert result.exit_code == 2
    assert "Attempting to unscale FP16 gradients" in result.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_tensorboard_events_outlive_staging(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    out = tmp_path / "tb-adapter"
    train_adapter(tiny_data, out, tiny_config(tiny_model, max_steps=2, tensorboard=True), show_progress=False)
    assert list((tmp_path / "tb-adapter.tensorboard").glob("events.out.tfevents.*"))
    assert verify_artifact(out) == []  # events are not part of the artifact


def test_grad_accum_matches_a_larger_batch(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    # the step loss is the mean over all trained tokens of the step, however it is split into micro-batches
    common = dict(epochs=1, lora_dropout=0.0, length_group_window=1, precision="fp32")  # bf16 rounding differs by split
    train_adapter(tiny_data, tmp_path / "big", tiny_config(tiny_model, batch_size=4, **common), show_progress=False)
    train_adapter(tiny_data, tmp_path / "acc", tiny_config(tiny_model, batch_size=2, grad_accum=2, **common), show_progress=False)
    big, acc = read_metrics(tmp_path / "big"), read_metrics(tmp_path / "acc")
    assert len(big) == len(acc) == 5  # 4 steps + the final eval
    for a, b in zip(big, acc):
        assert b.get("loss", b.get("eval_loss")) == pytest.approx(a.get("loss", a.get("eval_loss")), rel=1e-5)
