"""The CUDA speed-up switches of `lorafleet train`: config, the CPU path left untouched, and the two
loop changes they bring (smaller forward passes, loss from hidden states) being exact on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from prepared_data import tiny_config

from lorafleet.config import ConfigError, load_train_config
from lorafleet.train.distributed import init_distributed
from lorafleet.train.loop import train_step
from lorafleet.train.preflight import PreflightResult
from lorafleet.train.save import RunPaths, prepare_staging
from lorafleet.train.speedups import SpeedupSettings, settings_for
from lorafleet.train.trainer import setup

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_cuda_config_shows_every_switch():
    config = load_train_config(ROOT / "configs" / "qlora-cuda.yaml")
    text = (ROOT / "configs" / "qlora-cuda.yaml").read_text()
    for name in ("fused_lora", "fused_mlp", "fused_elementwise", "fused_cross_entropy", "frozen_bf16", "bf16_storage",
                 "triton_dropout", "triton_rope", "cuda_graphs", "paged_optimizer", "checkpointing", "micro_batch"):
        assert f"\n{name}:" in text
    # all on but the inexact one (and the opt-in dropout kernel), planned for CUDA graphs
    assert settings_for(config) == SpeedupSettings(frozen_bf16=False, cuda_graphs=True, triton_rope=config.triton_rope)
    assert not config.paged_optimizer
    assert not settings_for(config.model_copy(update={"cuda_graphs": False})).cuda_graphs


def test_switches_map_and_validate(tmp_path: Path):
    config = load_train_config(None, {"checkpointing": "full", "micro_batch": 2, "fused_mlp": False,
                                      "frozen_bf16": True})
    settings = settings_for(config)
    assert settings.checkpointing == "hf" and settings.micro_batch == 2 and not settings.fused_mlp
    assert not settings.frozen_bf16  # only for a QLoRA base
    assert settings_for(config.model_copy(update={"quantization": "nf4"})).frozen_bf16
    switched = settings_for(load_train_config(None, {"bf16_storage": False, "triton_dropout": True, "triton_rope": True}))
    assert (switched.bf16_storage, switched.triton_dropout, switched.triton_rope) == (False, True, True)
    with pytest.raises(ConfigError, match="micro_batch"):
        load_train_config(None, {"micro_batch": 0})
    with pytest.raises(ConfigError, match="checkpointing"):
        load_train_config(None, {"checkpointing": "sometimes"})


def _run(tiny_model: Path, tiny_data: Path, out: Path, **overrides):
    config = tiny_config(tiny_model, lora_dropout=0.0, gradient_checkpointing=True, **overrides)
    paths = RunPaths(out)
    prepare_staging(paths, resume=False)
    return setup(tiny_data, paths, config, tiny_model, PreflightResult(precision="fp32"), init_distributed(), False)


def test_cpu_setup_leaves_the_model_alone(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    run = _run(tiny_model, tiny_data, tmp_path / "a")
    assert run.micro_batch is None and not run.fused_loss and run.graphs is None
    assert not any("forward" in module.__dict__ for module in run.model.modules())  # no fused forwards
    layers = run.model.get_base_model().model.layers
    assert all(layer.gradient_checkpointing for layer in layers)  # transformers' own checkpointing, as configured
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}


def test_smaller_passes_and_hidden_state_loss_train_the_same(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    plain = _run(tiny_model, tiny_data, tmp_path / "plain")
    split = _run(tiny_model, tiny_data, tmp_path / "split")
    split.micro_batch, split.fused_loss = 1, True  # what the CUDA plan may set; both paths run on any device
    step = plain.batches(0)[0]
    loss_plain, tokens_plain, norm_plain = train_step(plain, [step])
    loss_split, tokens_split, norm_split = train_step(split, [step])
    assert tokens_plain == tokens_split
    assert loss_split == pytest.approx(loss_plain, rel=1e-5)
    assert norm_split == pytest.approx(norm_plain, rel=1e-4)
    after = dict(plain.model.named_parameters())
    for name, param in split.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, after[name], rtol=1e-4, atol=1e-6)
