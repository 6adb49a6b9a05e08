"""What the plan needs to know about the device and the model, read once; the plan itself is pure.

``DeviceFacts.probe`` measures the memory and runs each Triton kernel's check once on the device;
``ModelFacts.read`` looks at the PEFT-wrapped model (classes, shapes, dtypes, which frozen tables hold
bf16 values) without changing it. Both are small frozen dataclasses, so tests build them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from lorafleet.train.fast.bf16_tables import holds_bf16_values, tables
from lorafleet.train.fast.memory import ModelDims

ALLOCATOR_ROUNDING = 512  # torch's caching allocator hands out blocks in multiples of 512 bytes
NF4_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class DeviceFacts:
    """The training device: its memory when the plan is made and which kernels work on it (None = works)."""

    kind: Literal["cpu", "cuda"]
    free_bytes: int = 0
    allocated_bytes: int = 0
    triton_problem: str | None = "not a CUDA device"
    dropout_problem: str | None = "not a CUDA device"
    rope_problem: str | None = "not a CUDA device"
    dequant_problem: str | None = "not a CUDA device"

    @classmethod
    def probe(cls, device: torch.device, rope_module: str | None, nf4: bool = False) -> DeviceFacts:
        """Measure the memory (before anything else allocates), then check the kernels on ``device``
        (the NF4 kernel only when ``nf4``: the model has 4-bit weights)."""
        if device.type != "cuda":
            return cls("cpu")
        from lorafleet.train.fast.kernels import dropout_problem, rope_problem, triton_problem

        free, _ = torch.cuda.mem_get_info(device)
        allocated = torch.cuda.memory_allocated(device)
        rope = rope_problem(device, rope_module) if rope_module else "no attention module to take RoPE from"
        dequant = "no NF4 weights"
        if nf4:
            from lorafleet.train.fast.nf4_kernel import dequant_problem

            dequant = dequant_problem(device)
        return cls("cuda", free, allocated, triton_problem(device), dropout_problem(device), rope, dequant)


@dataclass(frozen=True)
class ModelFacts:
    """The PEFT-wrapped causal LM as the plan sees it."""

    model_type: str
    layer_classes: frozenset[str] = frozenset()
    attention_classes: frozenset[str] = frozenset()
    norm_classes: frozenset[str] = frozenset()
    hidden_act: str | None = "silu"
    rope_types: frozenset[str] = frozenset({"default"})
    hooked: bool = False  # forward hooks on a decoder layer, its attention or its MLP
    dims: ModelDims | None = None
    trainable_params: int = 0
    embed_element_size: int = 4  # the residual stream's bytes per element
    head_numel: int = 0
    head_is_bf16: bool = False
    head_has_lora: bool = False  # the loss from hidden states would skip a LoRA on the head
    frozen_fp32_bytes: int = 0  # allocator bytes that frozen fp32 → bf16 frees (frozen_bf16)
    bf16_table_bytes: int = 0  # allocator bytes that bf16 storage of bf16-valued tables frees
    head_is_bf16_table: bool = False  # the head is one of those tables
    head_is_frozen_fp32: bool = False
    nf4_weights: int = 0  # bitsandbytes 4-bit frozen weights
    nf4_layout_problem: str | None = None  # why the one-kernel NF4 dequantization does not take one of them
    attention_dropout: float = 0.0  # the config's: a recomputed layer would draw new attention masks
    attention_module: str | None = field(default=None, compare=False)  # e.g. transformers' modeling_llama

    @classmethod
    def read(cls, model: nn.Module, storage: bool = True) -> ModelFacts:
        """Read ``model`` (PEFT-wrapped or not). ``storage`` also checks which frozen fp32 tables hold
        bf16 values (a pass over them; only worth it where the plan may store them in bf16)."""
        base = base_model(model)
        config = base.config
        layers = decoder_layers(base)
        parts = [(layer, getattr(layer, "self_attn", None), getattr(layer, "mlp", None)) for layer in layers]
        norms = [getattr(layer, n, None) for layer in layers for n in ("input_layernorm", "post_attention_layernorm")]
        head = base.get_output_embeddings()
        head_weight = head.weight if head is not None else None
        frozen = [p for p in model.parameters() if not p.requires_grad and p.dtype == torch.float32]
        exact = [p for p in tables(base) if holds_bf16_values(p)] if storage else []
        attention = parts[0][1] if parts else None
        four_bit = [p for p in model.parameters() if type(p).__name__ == "Params4bit"]
        return cls(
            model_type=getattr(config, "model_type", type(base).__name__),
            layer_classes=frozenset(type(layer).__name__ for layer, _, _ in parts),
            attention_classes=frozenset(type(a).__name__ for _, a, _ in parts),
            norm_classes=frozenset(type(n).__name__ for n in norms),
            hidden_act=getattr(config, "hidden_act", None),
            rope_types=rope_types(config),
            hooked=any(_hooked(m) for trio in parts for m in trio if m is not None),
            dims=_dims(config),
            trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
            embed_element_size=base.get_input_embeddings().weight.element_size(),
            head_numel=head_weight.numel() if head_weight is not None else 0,
            head_is_bf16=head_weight is not None and head_weight.dtype == torch.bfloat16,
            head_has_lora=head is not None and hasattr(head, "lora_A"),
            frozen_fp32_bytes=sum(_saved_by_bf16(p) for p in frozen) if storage else 0,
            bf16_table_bytes=sum(_saved_by_bf16(p) for p in exact),
            head_is_bf16_table=any(p is head_weight for p in exact),
            head_is_frozen_fp32=any(p is head_weight for p in frozen),
            nf4_weights=len(four_bit),
            nf4_layout_problem=next(filter(None, (nf4_layout_problem(p.data, p.quant_state) for p in four_bit)), None),
            attention_module=type(attention).__module__ if attention is not None else None,
            attention_dropout=float(getattr(config, "attention_dropout", 0.0) or 0.0),
        )


def nf4_layout_problem(packed: torch.Tensor, state) -> str | None:
    """Why ``nf4_kernel`` does not take a bitsandbytes 4-bit weight (``packed``, its ``quant_state``), or None.
    Pure: reads only dtypes, shapes and the state's fields."""
    if state is None:
        return "no quant_state (not quantized yet)"
    if state.quant_type != "nf4":
        return f"quant_type {state.quant_type} (the kernel reads NF4)"
    if state.dtype not in NF4_OUT_DTYPES:
        return f"dtype {state.dtype}"
    if state.blocksize % 2:
        return f"odd blocksize {state.blocksize}"
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != 1:
        return f"packed storage {packed.dtype} {tuple(packed.shape)} (the kernel reads uint8 bytes as (n, 1))"
    if state.nested:
        nested = state.state2
        if nested is None or state.absmax.dtype != torch.uint8 or nested.absmax.dtype != torch.float32 \
                or nested.code.numel() != 256:
            return "nested absmax not 8-bit codes with fp32 scales"
    elif state.absmax.dtype != torch.float32:
        return f"absmax dtype {state.absmax.dtype}"
    return None


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(base: nn.Module) -> nn.ModuleList | list:
    """The decoder's layer list of a transformers causal LM (empty when it has none)."""
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", base)
    return getattr(decoder, "layers", [])


def rope_types(config) -> frozenset[str]:
    """The rotary embedding types of ``config`` (transformers 5 keeps them in rope_parameters, flat or per
    layer type)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    groups = list(params.values()) if params and all(isinstance(v, dict) for v in params.values()) else [params]
    return frozenset(g.get("rope_type", g.get("type", "default")) for g in groups)


def _dims(config) -> ModelDims | None:
    try:
        return ModelDims.from_config(config)
    except (AttributeError, TypeError):
        return None


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _saved_by_bf16(param: torch.Tensor) -> int:
    """Allocator bytes freed when an fp32 tensor is replaced by its bf16 copy (blocks are rounded)."""
    def rounded(n: int) -> int:
        return -(-n // ALLOCATOR_ROUNDING) * ALLOCATOR_ROUNDING
    return rounded(param.numel() * 4) - rounded(param.numel() * 2)
