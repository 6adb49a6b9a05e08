"""Exact bf16 storage for the frozen fp32 embedding and head of a QLoRA model (``bf16_storage``).

``prepare_model_for_kbit_training`` upcasts the embedding and head to fp32. Their values stay bf16
values, so bf16 storage loses nothing: the embedding's output is cast back to fp32 (the residual stream
is unchanged) and the head's matmul runs in bf16 under autocast (and in the fused loss) anyway. At the
Llama-8B shape this frees ~3 GB: both tables' fp32 halves and the fused loss's per-pass bf16 copy of an
fp32 head. Requires autocast for the head, as QLoRA training always has.
"""

from __future__ import annotations

import torch
from torch import nn


def _bf16_exactly(param: nn.Parameter) -> bool:
    """Turn a frozen fp32 parameter whose every value is a bf16 value into bf16 storage; True if done."""
    if param.requires_grad or param.dtype != torch.float32:
        return False
    narrow = param.data.to(torch.bfloat16)
    for wide, low in zip(param.data.split(4096), narrow.split(4096)):  # compared in chunks: small transients
        if not torch.equal(low.float(), wide):
            return False
    param.data = narrow
    return True


def _cast_output(dtype: torch.dtype):
    def hook(module, args, output):
        return output.to(dtype)
    return hook


def store_tables_in_bf16(base: nn.Module) -> bool:
    """The input embedding (its output cast back to fp32) and the output head of the causal LM ``base``,
    when they are frozen fp32 tables holding bf16 values, go to bf16 storage. True if either changed;
    ``remove_embedding_hook`` undoes the output cast."""
    changed = False
    embed = base.get_input_embeddings()
    if _bf16_exactly(embed.weight):
        base._lorafleet_embed_hook = embed.register_forward_hook(_cast_output(torch.float32))
        changed = True
    head = base.get_output_embeddings()
    if head is not None and head.weight is not embed.weight and _bf16_exactly(head.weight):
        changed = True
    return changed


def remove_embedding_hook(base: nn.Module) -> None:
    """Undo the embedding output cast of ``store_tables_in_bf16`` (storage dtypes stay)."""
    if hasattr(base, "_lorafleet_embed_hook"):
        base._lorafleet_embed_hook.remove()
        del base._lorafleet_embed_hook
