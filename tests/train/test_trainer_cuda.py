"""The CUDA paths of `train_adapter` on the tiny model: QLoRA (NF4 + lorafleet's 8-bit AdamW, or bitsandbytes'
paged one when asked) and bf16 LoRA, with the speed-up plan's defaults. Marked ``gpu``; skipped without CUDA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from prepared_data import read_metrics, tiny_config

from lorafleet.artifact import load_manifest, verify_artifact

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")


@needs_bnb
def test_qlora_base_is_nf4_on_one_device_with_checkpointing(tiny_model: Path):
    from lorafleet.train.build import attach_adapter, build_optimizer, load_base_model
    from lorafleet.train.fast.facts import DeviceFacts
    from lorafleet.train.fast.plan import choose_optimizer

    config = tiny_config(tiny_model, quantization="nf4", precision="bf16", gradient_checkpointing=True)
    device = torch.device("cuda", torch.cuda.current_device())
    model = load_base_model(config, tiny_model, "bf16", device)
    assert model.is_gradient_checkpointing
    assert {p.device for p in model.parameters()} == {device}  # explicit placement, never "auto"
    linear = model.model.layers[0].self_attn.q_proj
    assert type(linear).__name__ == "Linear4bit" and linear.weight.quant_type == "nf4"
    peft_model = attach_adapter(model, config)
    cuda = DeviceFacts("cuda")
    optimizer, _ = build_optimizer(peft_model, choose_optimizer(config, cuda), config, total_steps=10)
    assert type(optimizer).__name__ == "AdamW8bit" and not optimizer.is_paged  # lorafleet's, no per-parameter sync
    paged_config = tiny_config(tiny_model, quantization="nf4", speedups={"paged_optimizer": True})
    paged, _ = build_optimizer(peft_model, choose_optimizer(paged_config, cuda), config, total_steps=10)
    assert type(paged).__name__ == "PagedAdamW8bit"


@needs_bnb
def test_qlora_trains_and_saves(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorafleet.train.trainer import train_adapter

    out = tmp_path / "qlora"
    config = tiny_config(tiny_model, quantization="nf4", precision="auto", gradient_checkpointing=True, epochs=4, max_grad_norm=1.0)
    manifest = train_adapter(tiny_data, out, config, show_progress=False)
    assert manifest.lora.quantization == "nf4" and verify_artifact(out) == []
    losses = [r["loss"] for r in read_metrics(out) if r["type"] == "train"]
    assert sum(losses[-4:]) < sum(losses[:4]) - 0.1, losses
    ids = torch.tensor([[1, 502, 3000, 42, 7, 9]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        before = base(ids).logits.clone()
        after = PeftModel.from_pretrained(base, out).eval()(ids).logits
    assert (after - before).abs().max() > 1e-3


def test_bf16_lora_trains(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    from lorafleet.train.trainer import train_adapter

    out = tmp_path / "bf16"
    manifest = train_adapter(tiny_data, out, tiny_config(tiny_model, precision="auto", epochs=4, max_grad_norm=1.0), show_progress=False)
    assert verify_artifact(out) == []
    losses = [r["loss"] for r in read_metrics(out) if r["type"] == "train"]
    assert sum(losses[-4:]) < sum(losses[:4]) - 0.1, losses
    assert manifest.metrics.steps == 16


@needs_bnb
def test_qlora_with_cuda_graphs_replays_and_matches_eager(tiny_model: Path, tiny_data: Path, tmp_path: Path, caplog,
                                                         capsys):
    """The default CUDA path captures each row length's pass once and replays it; without dropout its
    losses are those of the eager path (rows padded to 64 without a mask: exact up to bf16 rounding)."""
    import logging

    from lorafleet.train.trainer import train_adapter

    losses = {}
    for graphs in (False, True):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lorafleet.train.fast.graphs"):
            config = tiny_config(tiny_model, quantization="nf4", precision="auto", epochs=3, lora_dropout=0.0,
                                 speedups={"cuda_graphs": graphs}, max_grad_norm=1.0)
            train_adapter(tiny_data, tmp_path / str(graphs), config, show_progress=False)
        losses[graphs] = [r["loss"] for r in read_metrics(tmp_path / str(graphs)) if r["type"] == "train"]
        captured = [r for r in caplog.records if "captured a CUDA graph" in r.getMessage()]
        assert bool(captured) == graphs
        plan = load_manifest(tmp_path / str(graphs)).speedup_plan  # the manifest records the plan
        assert plan["fast"] and plan["cuda_graphs"] == graphs and plan["architecture"] == "llama"
        assert bool(plan["pad_widths"]) == graphs
    assert "CUDA graphs on" in capsys.readouterr().err
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-3)
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)
    assert sum(losses[True][-3:]) < sum(losses[True][:3])
