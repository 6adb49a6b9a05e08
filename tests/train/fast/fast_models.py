"""Tiny random models and helpers for the fast-path tests (CPU and CUDA).

`tiny_model(arch)` builds a 2-layer model of an architecture with random weights; `with_lora` wraps it
in PEFT LoRA on every linear with non-zero B matrices, so every LoRA gradient path is exercised;
`fast_plan` is a fused-path plan made by hand, for applying the fused layers on a CPU (where the plan
itself always chooses the plain path).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from peft import LoraConfig, get_peft_model

from lorafleet.config import SpeedupConfig, TrainConfig
from lorafleet.train.fast.plan import SpeedupPlan

SHAPE = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=1024)
# Per architecture: its config class, model class and what makes it differ from Llama where it does.
ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 4096}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),  # q/k/v with bias
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 32}),  # norm 1 + w, GELU, scaled embeddings
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 32, "final_logit_softcapping": 30.0}),
    "granite": ("GraniteConfig", "GraniteForCausalLM",  # Granite 3's multipliers
                {"embedding_multiplier": 12.0, "residual_multiplier": 0.22, "logits_scaling": 8.0,
                 "attention_multiplier": 0.015625}),
}
ALLOWED = ("llama", "mistral", "qwen2")
REFUSED = ("gemma", "gemma2", "granite")


def tiny_model(arch: str = "llama", dtype: torch.dtype = torch.float32, device: str = "cpu"):
    import transformers

    config_name, model_name, extra = ARCHITECTURES[arch]
    config = getattr(transformers, config_name)(**SHAPE, **extra)
    torch.manual_seed(0)
    return getattr(transformers, model_name)(config).to(device=device, dtype=dtype)


def tiny_llama(dtype: torch.dtype, device: str):
    return tiny_model("llama", dtype, device)


def with_lora(model, dropout: float = 0.0, r: int = 8):
    torch.manual_seed(1)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules="all-linear",
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


def fast_plan(**changes) -> SpeedupPlan:
    """A fused-path plan as the CPU cannot get from plan_speedups (no Triton, no graphs)."""
    plan = SpeedupPlan(fast=True, rows=2, micro_batch=2, recompute="none", optimizer="adamw", fused_lora=True,
                       fused_mlp=True, fused_loss=True, architecture="llama")
    return dataclasses.replace(plan, **changes)


def speedup_config(batch_size: int = 2, lora_dropout: float = 0.0, quantization: str = "none",
                   **speedups) -> TrainConfig:
    """A TrainConfig for calling `enable_speedups` directly, with these speed-up switches."""
    return TrainConfig(batch_size=batch_size, lora_dropout=lora_dropout, quantization=quantization,
                       speedups=SpeedupConfig(**speedups))


def nf4_tiny_llama(arch: str = "llama"):
    """The tiny model on CUDA with its decoder linears as bitsandbytes NF4 (skips without bitsandbytes)."""
    bnb = pytest.importorskip("bitsandbytes", reason="NF4 needs bitsandbytes")
    base = tiny_model(arch, torch.bfloat16, "cuda")
    for layer in base.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, sub in list(parent.named_children()):
                if isinstance(sub, torch.nn.Linear):
                    q = bnb.nn.Linear4bit(sub.in_features, sub.out_features, bias=sub.bias is not None,
                                          compute_dtype=torch.bfloat16, quant_type="nf4", device="meta")
                    q.weight = bnb.nn.Params4bit(sub.weight.data, requires_grad=False, quant_type="nf4",
                                                 compress_statistics=True).to("cuda")
                    if sub.bias is not None:
                        q.bias = torch.nn.Parameter(sub.bias.data, requires_grad=False)
                    setattr(parent, name, q)
    base.is_loaded_in_4bit = True
    return base
