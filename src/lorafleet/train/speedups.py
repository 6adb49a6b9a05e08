"""GPU speed-ups that `lorafleet train` applies to a PEFT LoRA/QLoRA Llama-family model on CUDA.

Each speed-up computes the same function as the plain transformers + PEFT path (up to bf16 rounding
order) and can be switched off through :class:`SpeedupSettings`:

* ``fused_lora``: every eligible LoRA linear runs as one fused autograd function (``fused_lora.py``);
* ``fused_mlp``: the post-attention RMSNorm and the whole SwiGLU MLP run as one function that saves
  only its input, gate and up outputs (the seed stack saves or recomputes far more);
* ``checkpointing``: ``"auto"`` keeps all activations when they fit in the memory budget, else
  recomputes only attention, else recomputes whole layers from inputs kept in pinned host memory
  (``"offload"``, what makes very long contexts train); ``"hf"`` leaves transformers' own choice;
* ``fused_cross_entropy``: Liger's fused linear cross-entropy computes the loss from hidden states in
  chunks, never building the (tokens, vocab) logits (needs liger-kernel; falls back when missing);
* ``frozen_bf16``: frozen embeddings, norms and head that ``prepare_model_for_kbit_training`` upcast
  to fp32 go back to bf16 (the values were bf16; the residual stream is then carried in bf16).

On a model without CUDA parameters ``apply_speedups`` changes nothing and says so.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lorafleet.train.fused_lora import LoraLinearFunction, NormLoraMLPFunction, RMSNormFunction
from lorafleet.train.offload import OffloadedLayerFunction

Checkpointing = Literal["auto", "none", "attention", "offload", "hf"]


@dataclass(frozen=True)
class SpeedupSettings:
    """Switches for the CUDA training speed-ups (all on by default)."""

    fused_lora: bool = True
    fused_mlp: bool = True
    fused_cross_entropy: bool = True
    frozen_bf16: bool = True
    checkpointing: Checkpointing = "auto"


@dataclass
class AppliedSpeedups:
    """What ``apply_speedups`` actually turned on (for logs and the manifest)."""

    fused_lora_layers: int = 0
    fused_mlps: int = 0
    checkpointing: str = "hf"
    fused_cross_entropy: bool = False
    notes: list[str] = field(default_factory=list)


def saved_bytes_per_token(hidden: int, intermediate: int, kv_dim: int, layers: int, mode: str) -> int:
    """Estimated activation bytes kept per token (bf16) until backward, for a fused Llama-family layer
    stack; ``mode`` is a checkpointing choice. Pure, so the plan is testable."""
    mlp = 2 * hidden + 2 * intermediate  # block input, its normed copy in flight, gate, up
    attention = 2 * hidden + 3 * hidden + 3 * kv_dim + 2 * hidden  # input, normed, q/rope/out, k, v
    per_layer = {"none": mlp + attention, "attention": mlp + hidden, "offload": 0}.get(mode, mlp + attention)
    return 2 * layers * per_layer


def choose_checkpointing(tokens: int, hidden: int, intermediate: int, kv_dim: int, layers: int,
                         budget_bytes: int) -> Checkpointing:
    """The cheapest checkpointing whose kept activations for ``tokens`` fit ``budget_bytes``
    (none, then attention-only recompute, else whole-layer recompute with inputs in host memory)."""
    for mode in ("none", "attention"):
        if tokens * saved_bytes_per_token(hidden, intermediate, kv_dim, layers, mode) <= budget_bytes:
            return mode
    return "offload"


def choose_micro_batch(batch_size: int, seq_len: int, per_token_bytes: int, budget_bytes: int) -> int:
    """The largest divisor of ``batch_size`` whose activations fit ``budget_bytes`` (at least 1)."""
    for micro in range(batch_size, 0, -1):
        if batch_size % micro == 0 and micro * seq_len * per_token_bytes <= budget_bytes:
            return micro
    return 1


def _lora_parts(module: nn.Module) -> tuple[Tensor, Tensor, float, float] | None:
    """(lora_A weight, lora_B weight, scale, dropout p) of a PEFT LoRA linear with one plain active
    adapter, or None when the fused path would not be exact (DoRA, merged, disabled, several)."""
    if not hasattr(module, "lora_A") or getattr(module, "merged", False) or module.disable_adapters:
        return None
    active = [a for a in module.active_adapters if a in module.lora_A]
    if len(active) != 1 or getattr(module, "use_dora", {}).get(active[0], False):
        return None
    name = active[0]
    if name in getattr(module, "lora_variant", {}):
        return None
    dropout = module.lora_dropout[name]
    p = float(dropout.p) if isinstance(dropout, nn.Dropout) else 0.0
    return module.lora_A[name].weight, module.lora_B[name].weight, float(module.scaling[name]), p


def _fused_lora_forward(module: nn.Module, x: Tensor, *args, **kwargs) -> Tensor:
    parts = _lora_parts(module)
    if parts is None or args or kwargs:
        return type(module).forward(module, x, *args, **kwargs)
    a, b, scale, p = parts
    return LoraLinearFunction.apply(x, a, b, module.get_base_layer(), scale, p if module.training else 0.0)


def _fused_mlp(mlp: nn.Module, norm: nn.Module, h: Tensor) -> Tensor | None:
    parts = [_lora_parts(getattr(mlp, n, None)) for n in ("gate_proj", "up_proj", "down_proj")]
    if any(part is None for part in parts) or len({part[3] for part in parts}) != 1:
        return None
    p = parts[0][3] if mlp.training else 0.0
    bases = tuple(getattr(mlp, n).get_base_layer() for n in ("gate_proj", "up_proj", "down_proj"))
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    tensors = [t for part in parts for t in part[:2]]
    return NormLoraMLPFunction.apply(h, norm.weight, eps, bases, tuple(part[2] for part in parts), p, *tensors)


def _attention_block(layer: nn.Module, hidden_states: Tensor, **kwargs) -> Tensor:
    norm = layer.input_layernorm
    normed = RMSNormFunction.apply(hidden_states, norm.weight, getattr(norm, "variance_epsilon", 1e-6))
    out, _ = layer.self_attn(hidden_states=normed, **kwargs)
    return out


def _mlp_block(layer: nn.Module, hidden_states: Tensor, fused: bool) -> Tensor:
    out = _fused_mlp(layer.mlp, layer.post_attention_layernorm, hidden_states) if fused else None
    if out is None:
        out = layer.mlp(layer.post_attention_layernorm(hidden_states))
    return out


def _layer_body(layer: nn.Module, fused_mlp: bool, attention_recompute: bool, hidden_states: Tensor,
                **kwargs) -> Tensor:
    attend = functools.partial(_attention_block, layer, **kwargs)
    if attention_recompute and torch.is_grad_enabled():
        attn = checkpoint(attend, hidden_states, use_reentrant=False)
    else:
        attn = attend(hidden_states)
    hidden_states = hidden_states + attn
    return hidden_states + _mlp_block(layer, hidden_states, fused_mlp)


def _layer_forward(layer: nn.Module, hidden_states: Tensor, *args, **kwargs) -> Tensor:
    """Replacement decoder-layer forward; keyword arguments are those transformers passes."""
    mode, fused_mlp = layer._lorafleet_mode, layer._lorafleet_fused_mlp
    kwargs["use_cache"] = False
    kwargs["past_key_values"] = None
    if mode == "offload" and layer.training and torch.is_grad_enabled():
        body = functools.partial(_layer_body, layer, fused_mlp, False, **kwargs)
        return OffloadedLayerFunction.apply(body, hidden_states, torch.empty(0, requires_grad=True))
    return _layer_body(layer, fused_mlp, mode == "attention" and layer.training, hidden_states, **kwargs)


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", base)
    return list(getattr(decoder, "layers", []))


def apply_speedups(model: nn.Module, settings: SpeedupSettings, tokens_per_micro_batch: int,
                   memory_budget_bytes: int | None = None) -> AppliedSpeedups:
    """Turn on the speed-ups in place on a PEFT-wrapped causal LM; undo with ``remove_speedups``.

    ``memory_budget_bytes`` is what activations may take (default: free CUDA memory less 10%); the
    checkpointing choice depends on it and on ``tokens_per_micro_batch``. CPU models are left alone.
    """
    applied = AppliedSpeedups()
    params = list(model.parameters())
    if not params or params[0].device.type != "cuda":
        applied.notes.append("not on CUDA: speed-ups off")
        return applied
    if settings.frozen_bf16:
        for param in model.parameters():
            if not param.requires_grad and param.dtype == torch.float32:
                param.data = param.data.to(torch.bfloat16)
    if settings.fused_lora:
        for module in model.modules():
            if hasattr(module, "lora_A") and _lora_parts(module) is not None:
                module.forward = functools.partial(_fused_lora_forward, module)
                applied.fused_lora_layers += 1
    layers = _decoder_layers(model)
    if settings.checkpointing != "hf" and layers and hasattr(layers[0], "self_attn"):
        mode = settings.checkpointing
        if mode == "auto":
            config = model.config
            kv_dim = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
            if memory_budget_bytes is None:
                free, _ = torch.cuda.mem_get_info(params[0].device)
                memory_budget_bytes = int(free * 0.9)
            mode = choose_checkpointing(tokens_per_micro_batch, config.hidden_size, config.intermediate_size,
                                        kv_dim, len(layers), memory_budget_bytes)
        for layer in layers:
            layer._lorafleet_saved_gc = getattr(layer, "gradient_checkpointing", False)
            layer.gradient_checkpointing = False
            layer._lorafleet_mode = mode
            layer._lorafleet_fused_mlp = settings.fused_mlp and settings.fused_lora
            layer.forward = functools.partial(_layer_forward, layer)
        applied.fused_mlps = len(layers) if settings.fused_mlp and settings.fused_lora else 0
        applied.checkpointing = mode
    applied.fused_cross_entropy = settings.fused_cross_entropy and _liger_loss() is not None
    model._lorafleet_speedups = applied
    return applied


def remove_speedups(model: nn.Module) -> None:
    """Undo ``apply_speedups`` (instance forwards and checkpointing flags; dtypes stay as they are)."""
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), functools.partial):
            del module.forward
        if hasattr(module, "_lorafleet_saved_gc"):
            module.gradient_checkpointing = module._lorafleet_saved_gc
            for name in ("_lorafleet_saved_gc", "_lorafleet_mode", "_lorafleet_fused_mlp"):
                delattr(module, name)
    if hasattr(model, "_lorafleet_speedups"):
        del model._lorafleet_speedups


@functools.cache
def _liger_loss():
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="sum")


def causal_lm_loss_sum(model: nn.Module, input_ids: Tensor, labels: Tensor, fused: bool = True,
                       **model_kwargs) -> tuple[Tensor, int]:
    """(sum of next-token cross-entropy over labelled positions, number of them): labels are shifted
    here, -100 is ignored. ``fused`` uses Liger's chunked kernel on CUDA when installed, which never
    builds the logits; otherwise the logits are built and the loss taken in fp32."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=input_ids, **model_kwargs).last_hidden_state  # (batch, seq, hidden)
    head = base.get_output_embeddings()
    flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    target = labels[:, 1:].reshape(-1)
    count = int((target != -100).sum())
    liger = _liger_loss() if fused and flat.is_cuda else None
    if liger is not None:
        weight = head.weight
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else flat.dtype
        return liger(weight.to(dtype), flat.to(dtype), target), count
    logits = head(flat).float()  # (tokens, vocab)
    return nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum"), count
