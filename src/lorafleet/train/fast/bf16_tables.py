"""Exact bf16 storage for the frozen fp32 embedding and head of a QLoRA model (``bf16_storage``).

``prepare_model_for_kbit_training`` upcasts the embedding and head to fp32. Their values stay bf16
values, so bf16 storage loses nothing: the embedding's output is cast back to fp32 (the residual stream
is unchanged) and the head's matmul runs in bf16 under autocast (and in the fused loss) anyway. At the
Llama-8B shape this frees ~3 GB: both tables' fp32 halves and the fused loss's per-pass bf16 copy of an
fp32 head. Requires bf16 autocast for the head, as QLoRA training always has (the plan checks it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def holds_bf16_values(param: nn.Parameter) -> bool:
    """Is ``param`` a frozen fp32 table whose every value is a bf16 value (so bf16 storage is exact)?"""
    if param.requires_grad or param.dtype != torch.float32:
        return False
    for wide in param.data.split(4096):  # compared in chunks: small transients
        if not torch.equal(wide.to(torch.bfloat16).float(), wide):
            return False
    return True


def tables(base: nn.Module) -> list[nn.Parameter]:
    """The input embedding and, when not tied to it, the output head of the causal LM ``base``."""
    embed = base.get_input_embeddings().weight
    head = base.get_output_embeddings()
    return [embed] + ([head.weight] if head is not None and head.weight is not embed else [])


def _cast_output(dtype: torch.dtype):
    def hook(module, args, output):
        return output.to(dtype)
    return hook


def store_tables_in_bf16(base: nn.Module) -> RemovableHandle | None:
    """Store the tables of ``base`` that hold bf16 values in bf16; the embedding's output is cast back
    to fp32 by a forward hook, whose handle is returned (None when the embedding was left alone)."""
    embed = base.get_input_embeddings()
    handle = None
    for param in tables(base):
        if holds_bf16_values(param):
            param.data = param.data.to(torch.bfloat16)
            if param is embed.weight:
                handle = embed.register_forward_hook(_cast_output(torch.float32))
    return handle
