"""The `speedups:` section of `lorafleet train`: config, old keys, the CPU path left untouched, and the two
loop changes the fast path brings (smaller forward passes, loss from hidden states) being exact on the CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from prepared_data import tiny_config

from lorafleet.config import ConfigError, SpeedupConfig, TrainConfig, load_train_config
from lorafleet.train.data import open_prepared
from lorafleet.train.distributed import init_distributed
from lorafleet.train.fast.patch import apply_plan
from lorafleet.train.loop import PassLoss, evaluate, train_step
from lorafleet.train.preflight import PreflightResult
from lorafleet.train.save import RunPaths, prepare_staging
from lorafleet.train.trainer import setup

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_cuda_config_shows_every_switch():
    config = load_train_config(ROOT / "configs" / "qlora-cuda.yaml")
    text = (ROOT / "configs" / "qlora-cuda.yaml").read_text()
    for name in SpeedupConfig.model_fields:
        assert f"\n  {name}:" in text, name
    # every switch at its default: all on but the inexact frozen_bf16 and the seed stack's paged optimizer
    assert config.speedups == SpeedupConfig()
    assert not config.speedups.paged_optimizer and not config.speedups.frozen_bf16
    assert config.speedups.cuda_graphs and config.speedups.triton_rope
    assert "lorafleet's 8-bit AdamW" in text.splitlines()[0]  # not "paged": the default is the unsynced one


def test_switches_validate(tmp_path: Path):
    config = load_train_config(None, {"speedups": {"recompute": "attention", "micro_batch": 2, "fused_mlp": False}})
    assert config.speedups.recompute == "attention" and config.speedups.micro_batch == 2
    assert not config.speedups.fused_mlp and config.speedups.fused_lora  # the other switches keep their defaults
    with pytest.raises(ConfigError, match="micro_batch"):
        load_train_config(None, {"speedups": {"micro_batch": 0}})
    with pytest.raises(ConfigError, match="must divide batch_size 4"):
        load_train_config(None, {"speedups": {"micro_batch": 3}})
    with pytest.raises(ConfigError, match="recompute"):
        load_train_config(None, {"speedups": {"recompute": "sometimes"}})
    with pytest.raises(ConfigError, match="cuda_graph"):
        load_train_config(None, {"speedups": {"cuda_graph": True}})  # a typo is an error, not a silent default


def test_a_file_and_flags_merge_inside_the_section(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("speedups:\n  cuda-graphs: false\n  frozen_bf16: true\n")
    config = load_train_config(path, {"speedups": {"frozen_bf16": False}})
    assert not config.speedups.cuda_graphs and not config.speedups.frozen_bf16


@pytest.mark.parametrize(("key", "where"), [
    ("fused_lora", "speedups.fused_lora"), ("cuda_graphs", "speedups.cuda_graphs"),
    ("paged_optimizer", "speedups.paged_optimizer"), ("micro_batch", "speedups.micro_batch"),
    ("checkpointing", "speedups.recompute"), ("triton_dropout", "was removed"),
])
def test_old_flat_keys_name_their_new_place(tmp_path: Path, key: str, where: str):
    path = tmp_path / "old.yaml"
    path.write_text(f"{key}: true\n")
    with pytest.raises(ConfigError, match=rf"old\.yaml.*'{key}'.*{where}"):
        load_train_config(path)


def _run(tiny_model: Path, tiny_data: Path, out: Path, **overrides):
    config = tiny_config(tiny_model, lora_dropout=0.0, gradient_checkpointing=True, **overrides)
    paths = RunPaths(out)
    prepare_staging(paths, resume=False)
    run, fast = setup(open_prepared(tiny_data), paths, config, tiny_model, PreflightResult(precision="fp32"),
                      init_distributed(), False)
    return run


def test_cpu_setup_leaves_the_model_alone(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    run = _run(tiny_model, tiny_data, tmp_path / "a")
    assert not run.plan.fast and run.plan.micro_batch == 4 and not run.loss.fused and run.graphs is None
    assert run.plan.recompute == "transformers" and run.plan.optimizer == "adamw"
    assert not any("forward" in module.__dict__ for module in run.model.modules())  # no fused forwards
    layers = run.model.get_base_model().model.layers
    assert all(layer.gradient_checkpointing for layer in layers)  # transformers' own checkpointing, as configured
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("fused_layers", [False, True], ids=["loop-only", "fused-layers"])
def test_smaller_passes_and_hidden_state_loss_train_the_same(tiny_model: Path, tiny_data: Path, tmp_path: Path,
                                                             fused_layers: bool):
    plain = _run(tiny_model, tiny_data, tmp_path / "plain")
    split = _run(tiny_model, tiny_data, tmp_path / "split")
    # What the CUDA plan may set; all of it runs on any device: one row per pass, the loss from hidden
    # states, and (fused-layers) the fused decoder layers with attention recompute and rows padded to 64.
    split.plan = dataclasses.replace(split.plan, micro_batch=1)
    if fused_layers:
        split.plan = dataclasses.replace(split.plan, fast=True, recompute="attention", fused_lora=True, fused_mlp=True,
                                         fused_loss=True, pad_multiple=64, architecture="llama")
        patches = apply_plan(split.model, split.plan)
        assert patches.fused_layers == 2 and patches.fused_lora_layers == 14
    split.loss = dataclasses.replace(split.loss, fused=True)
    # Evaluation goes through the same pass loss at the same rows per pass: the loss it reports does not change.
    assert evaluate(split) == pytest.approx(evaluate(plain), rel=1e-5)
    step = plain.batches(0)[0]
    loss_plain, tokens_plain, norm_plain = train_step(plain, step)
    loss_split, tokens_split, norm_split = train_step(split, step)
    assert tokens_plain == tokens_split
    assert loss_split == pytest.approx(loss_plain, rel=1e-5)
    assert norm_split == pytest.approx(norm_plain, rel=1e-4)
    after = dict(plain.model.named_parameters())
    for name, param in split.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, after[name], rtol=1e-4, atol=1e-6)


def test_the_loss_of_a_pass_is_a_plain_callable(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    run = _run(tiny_model, tiny_data, tmp_path / "a")
    assert isinstance(run.loss, PassLoss) and run.loss.autocast_dtype is None  # fp32 on the CPU
    assert TrainConfig().speedups.enabled  # on by default; the plan keeps a CPU run plain
