"""The fused layers compute what plain PEFT computes, for each allow-listed architecture (float64 on the
CPU: logits, fused loss and LoRA gradients); other architectures are refused by the allow-list.

The plan never chooses the fused path on a CPU, so these tests apply a hand-made fused-path plan
(`fast_plan`); the same comparison in bf16 on CUDA, through `enable_speedups`, is test_gpu_architectures.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from fast_models import ALLOWED, REFUSED, batch, fast_plan, lora_grads, max_rel_err, speedup_config, tiny_model, with_lora

from lorafleet.train.fast import enable_speedups, fused_lora, hidden_state_loss_sum
from lorafleet.train.fast.architectures import architecture_problem
from lorafleet.train.fast.facts import ModelFacts
from lorafleet.train.fast.layers import FastDecoderLayer, FusedLoraLinear
from lorafleet.train.fast.patch import apply_plan
from lorafleet.train.loop import causal_lm_loss_sum


def _logits_loss_grads(model, ids, labels):
    logits = model(input_ids=ids).logits  # (batch, seq, vocab)
    causal_lm_loss_sum(logits, labels).backward()
    grads = lora_grads(model)
    model.zero_grad()
    return logits.detach(), grads


@pytest.mark.parametrize("recompute", ["none", "attention"])
@pytest.mark.parametrize("arch", ALLOWED)
def test_fused_layers_match_peft_in_float64(arch: str, recompute: str):
    ids, labels = batch("cpu")
    base = tiny_model(arch, torch.float64)
    ref, fast = with_lora(copy.deepcopy(base)), with_lora(copy.deepcopy(base))
    names, keys = [n for n, _ in fast.named_parameters()], list(fast.state_dict())
    patches = apply_plan(fast, fast_plan(recompute=recompute, architecture=arch))
    assert (patches.fused_layers, patches.fused_mlps, patches.fused_lora_layers) == (2, 2, 14)
    assert [n for n, _ in fast.named_parameters()] == names and list(fast.state_dict()) == keys  # same adapter names
    ref_logits, ref_grads = _logits_loss_grads(ref, ids, labels)
    logits, grads = _logits_loss_grads(fast, ids, labels)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-7, atol=1e-9)
    assert max_rel_err(ref_grads, grads) < 1e-5  # RMSNorm statistics are fp32 (as in transformers), rest float64
    total, count = hidden_state_loss_sum(fast, ids, labels)
    assert float(total.detach()) == pytest.approx(float(causal_lm_loss_sum(ref_logits, labels)), rel=1e-9)
    assert int(count) == int((labels[:, 1:] != -100).sum())
    patches.remove()
    assert not any(isinstance(m, (FastDecoderLayer, FusedLoraLinear)) for m in fast.modules())
    assert [n for n, _ in fast.named_parameters()] == names


@pytest.mark.parametrize("mode", ["none", "attention"])
def test_fused_layers_dequantize_less(mode, monkeypatch):
    ids, labels = batch("cpu")
    base = tiny_model("llama", torch.float64)
    ref_loss, ref_grads = _loss_and_grads(with_lora(copy.deepcopy(base)), ids, labels)
    fast = with_lora(copy.deepcopy(base))
    patches = apply_plan(fast, fast_plan(recompute=mode))
    assert patches.fused_lora_layers == 14 and patches.fused_layers == 2
    calls = []
    real = fused_lora.dense_weight
    monkeypatch.setattr(fused_lora, "dense_weight", lambda *a: calls.append(1) or real(*a))  # counts, then calls
    loss, grads = _loss_and_grads(fast, ids, labels)
    assert abs(loss - ref_loss) < 1e-9
    assert max_rel_err(ref_grads, grads) < 1e-5
    # MLP: 3 forward + 3 backward per layer. Attention without recompute: 4 forward + 4 backward, except
    # layer 0 whose q/k/v input needs no gradient (1 backward). With recompute the backward reuses the
    # recomputation's weights: 4 forward + 4 recompute and no more (it was 33 before that change).
    assert len(calls) == {"none": (4 + 1 + 6) + (4 + 4 + 6), "attention": 2 * (4 + 4 + 6)}[mode]
    patches.remove()
    assert not any("forward" in m.__dict__ for m in fast.modules())


def _loss_and_grads(model, ids, labels) -> tuple[float, dict]:
    total, count = hidden_state_loss_sum(model, ids, labels)
    (total / count).backward()
    return float(total.detach() / count), lora_grads(model)


@pytest.mark.parametrize("arch", ALLOWED + REFUSED)
def test_the_allow_list(arch: str):
    facts = ModelFacts.read(with_lora(tiny_model(arch)), storage=False)
    problem = architecture_problem(facts)
    if arch in ALLOWED:
        assert problem is None, problem
    else:
        assert f"architecture {arch!r} is not on the fused path's allow-list" in problem


def test_a_llama_with_another_activation_is_refused():
    model = tiny_model("llama")
    model.config.hidden_act = "gelu"
    assert "hidden_act 'gelu'" in architecture_problem(ModelFacts.read(with_lora(model), storage=False))


def test_enable_speedups_leaves_a_cpu_model_alone():
    peft = with_lora(tiny_model("llama"))
    fast = enable_speedups(peft, speedup_config(), "fp32", 1, 64)
    assert not fast.plan.fast and fast.plan.recompute == "transformers" and fast.patches.fused_lora_layers == 0
    assert "speed-ups are CUDA-only" in fast.describe()
    assert not any(isinstance(m, (FastDecoderLayer, FusedLoraLinear)) for m in peft.modules())
    assert not any("forward" in m.__dict__ for m in peft.modules())


def test_graphed_plans_attend_causally_without_a_mask():
    """A plan that pads rows (CUDA graphs) feeds passes without a mask, so its layers drop any mask transformers
    builds (while a graph is captured it builds a full causal one); other plans honour the mask they are given."""
    ids, _ = batch("cpu")
    mask = torch.ones_like(ids)
    mask[:, :4] = 0  # hide the first tokens: a layer that honours the mask changes every later position
    results = {}
    for pad_multiple in (None, 64):
        fast = with_lora(tiny_model("llama", torch.float64))
        patches = apply_plan(fast, fast_plan(pad_multiple=pad_multiple))
        assert all(layer.settings.unmasked == (pad_multiple is not None)
                   for layer in fast.modules() if isinstance(layer, FastDecoderLayer))
        with torch.no_grad():
            masked = fast(input_ids=ids, attention_mask=mask).logits[:, 4:]
            unmasked = fast(input_ids=ids).logits[:, 4:]
        results[pad_multiple] = (masked, unmasked)
        patches.remove()
    masked, unmasked = results[64]
    torch.testing.assert_close(masked, unmasked, rtol=0, atol=0)
    masked, unmasked = results[None]
    assert (masked - unmasked).abs().max() > 1e-3
