"""The CUDA training speed-ups compute what plain transformers + PEFT computes.

GPU tests are marked ``gpu`` and skip on machines without CUDA; the CPU tests check the fused
functions in float64 against PEFT and that ``apply_speedups`` leaves a CPU model alone.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from lorafleet.train import speedups as S
from lorafleet.train.fused_lora import LoraLinearFunction, NormLoraMLPFunction

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny_llama(dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def with_lora(model: LlamaForCausalLM, dropout: float = 0.0):
    torch.manual_seed(1)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear",
                                            use_rslora=True, task_type="CAUSAL_LM"))
    for name, param in peft.named_parameters():
        if "lora_B" in name:  # non-zero B so every LoRA gradient path is exercised
            torch.nn.init.normal_(param, std=0.05)
    return peft.train()


def batch(device: str, seq: int = 33):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 512, (2, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 3] = -100
    return ids.to(device), labels.to(device)


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def max_rel_err(ref: dict, got: dict) -> float:
    assert ref.keys() == got.keys() and ref
    return max(float((ref[k] - got[k]).norm() / ref[k].norm()) for k in ref)


def test_fused_lora_functions_match_peft_in_float64():
    peft = with_lora(tiny_llama(torch.float64, "cpu"))
    layer = peft.base_model.model.model.layers[0]
    x = torch.randn(2, 5, 128, dtype=torch.float64, requires_grad=True)
    proj = layer.self_attn.q_proj
    ref = proj(x)
    ref.sum().backward()
    ref_grads = (x.grad.clone(), proj.lora_A["default"].weight.grad.clone(), proj.lora_B["default"].weight.grad.clone())
    x.grad = None
    proj.zero_grad()
    got = LoraLinearFunction.apply(x, proj.lora_A["default"].weight, proj.lora_B["default"].weight,
                                   proj.get_base_layer(), float(proj.scaling["default"]), 0.0)
    got.sum().backward()
    torch.testing.assert_close(got, ref)
    for r, g in zip(ref_grads, (x.grad, proj.lora_A["default"].weight.grad, proj.lora_B["default"].weight.grad)):
        torch.testing.assert_close(g, r)

    mlp, norm = layer.mlp, layer.post_attention_layernorm
    h = torch.randn(2, 5, 128, dtype=torch.float64, requires_grad=True)
    ref = mlp(norm(h))
    (ref * torch.linspace(-1, 1, 128, dtype=torch.float64)).sum().backward()
    ref_grads = [h.grad.clone()] + [p.grad.clone() for p in mlp.parameters() if p.grad is not None]
    h.grad = None
    mlp.zero_grad()
    parts = [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    tensors = [t for m in parts for t in (m.lora_A["default"].weight, m.lora_B["default"].weight)]
    got = NormLoraMLPFunction.apply(h, norm.weight, norm.variance_epsilon, tuple(m.get_base_layer() for m in parts),
                                    tuple(float(m.scaling["default"]) for m in parts), 0.0, *tensors)
    (got * torch.linspace(-1, 1, 128, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)  # RMSNorm statistics are fp32, as in transformers
    got_grads = [h.grad] + [p.grad for p in mlp.parameters() if p.grad is not None]
    for r, g in zip(ref_grads, got_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


def test_choose_checkpointing_prefers_least_recompute_that_fits():
    dims = dict(hidden=4096, intermediate=14336, kv_dim=1024, layers=32)
    per_none = S.saved_bytes_per_token(mode="none", **dims)
    per_attn = S.saved_bytes_per_token(mode="attention", **dims)
    assert per_attn < per_none
    assert S.choose_checkpointing(2048, budget_bytes=2048 * per_none, **dims) == "none"
    assert S.choose_checkpointing(2048, budget_bytes=2048 * per_none - 1, **dims) == "attention"
    assert S.choose_checkpointing(2048, budget_bytes=2048 * per_attn - 1, **dims) == "offload"
    assert S.choose_micro_batch(4, 100, 10, budget_bytes=2000) == 2
    assert S.choose_micro_batch(3, 100, 10, budget_bytes=500) == 1


def test_apply_speedups_is_a_no_op_on_cpu():
    peft = with_lora(tiny_llama(torch.float32, "cpu"))
    applied = S.apply_speedups(peft, S.SpeedupSettings(), 64)
    assert applied.fused_lora_layers == 0 and applied.checkpointing == "hf"
    assert not any("forward" in m.__dict__ for m in peft.modules())


def run_steps(model, fast: bool, ids, labels, steps: int = 3) -> tuple[list[float], dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if fast:
                total, count = S.causal_lm_loss_sum(model, ids, labels)
                loss = total / count
            else:
                loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        grads = lora_grads(model)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses, grads


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mode", ["none", "attention", "offload"])
def test_speedups_match_plain_peft_on_cuda(mode):
    ids, labels = batch("cuda")
    base = tiny_llama(torch.bfloat16, "cuda")
    ref_losses, ref_grads = run_steps(with_lora(copy.deepcopy(base)), False, ids, labels)
    fast = with_lora(copy.deepcopy(base))
    applied = S.apply_speedups(fast, S.SpeedupSettings(checkpointing=mode), ids.numel())
    assert applied.checkpointing == mode and applied.fused_lora_layers == 14 and applied.fused_mlps == 2
    losses, grads = run_steps(fast, True, ids, labels)
    assert max(abs(a - b) for a, b in zip(ref_losses, losses)) < 2e-2
    assert max_rel_err(ref_grads, grads) < 5e-2  # bf16 rounding order differs, nothing else


@pytest.mark.gpu
@needs_cuda
def test_speedups_with_dropout_and_nf4_train_and_are_reproducible():
    bnb = pytest.importorskip("bitsandbytes", reason="NF4 needs bitsandbytes")
    ids, labels = batch("cuda")
    base = tiny_llama(torch.bfloat16, "cuda")
    for layer in base.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, sub in list(parent.named_children()):
                if isinstance(sub, torch.nn.Linear):
                    q = bnb.nn.Linear4bit(sub.in_features, sub.out_features, bias=False, compute_dtype=torch.bfloat16,
                                          quant_type="nf4", device="meta")
                    q.weight = bnb.nn.Params4bit(sub.weight.data, requires_grad=False, quant_type="nf4").to("cuda")
                    setattr(parent, name, q)
    base.is_loaded_in_4bit = True
    runs = []
    for _ in range(2):
        model = with_lora(copy.deepcopy(base), dropout=0.1)
        S.apply_speedups(model, S.SpeedupSettings(checkpointing="attention"), ids.numel())
        torch.manual_seed(7)
        runs.append(run_steps(model, True, ids, labels, steps=4))
    plain = with_lora(copy.deepcopy(base), dropout=0.0)
    plain_losses, _ = run_steps(plain, False, ids, labels, steps=1)
    (losses, grads), (losses2, grads2) = runs
    assert losses == losses2 and max_rel_err(grads, grads2) == 0.0  # dropout masks come from seeded RNG
    assert abs(losses[0] - plain_losses[0]) < 5e-2  # same NF4 weights; only dropout noise differs
    assert losses[-1] < losses[0]
