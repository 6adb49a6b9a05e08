"""Memory plan for the fused path: how many rows per forward pass, and what to recompute.

Pure functions of the model shape and a byte budget, so the plan is testable without a GPU. The
per-token estimate counts what a fused Llama-family layer keeps until backward (bf16, 2 bytes per
element), plus one layer's transient working set during its backward and the fused loss head. It was
checked against peaks measured on the H200 for the Llama-3.1-8B shape (seq 2048, NF4, BENCHMARKS.md):
attention-only recompute 2.57 MB/token measured vs 2.63 estimated (torch elementwise path); no
recompute 3.51 measured vs 3.52 estimated. With fp32 embeddings (QLoRA without frozen_bf16) the
residual stream is fp32: the first round's estimate ignored that and a plan overshot the budget by
~0.4 GB on the H200 (18.2 GB peak vs 17.8 allowed); ``residual_bytes`` now counts it.

Preference: the largest micro-batch that fits (one long matmul beats two short ones by far more than
the attention recompute costs: measured 1.36× vs 1.14-1.28× at half the micro-batch), then the least
recompute at that micro-batch; when nothing fits with at most attention recompute, the largest micro-batch
that fits with host offload (round 9 ran offload at one row within 11.5 GB while 4 GB of it stayed unused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# What backward recomputes: nothing, the attention block, whole layers from inputs kept in host memory
# ("offload"), or every layer as transformers' own checkpointing does ("transformers", the plain path).
Recompute = Literal["none", "attention", "offload", "transformers"]
MARGIN_BYTES = 512 * 2**20  # allocator rounding and small transients the estimate does not itemize
GRADIENT_BYTES = 4  # fp32 LoRA gradients
STATE_BYTES = {"adamw": 8, "adamw-fused": 8, "adamw8bit": 2, "paged-adamw8bit": 2}  # two moments per parameter


def trainable_bytes_per_param(optimizer: str) -> int:
    """GPU bytes a trainable parameter adds to its own weight: its fp32 gradient and the optimizer's two
    moments (fp32 for torch's AdamW; one byte each for bitsandbytes' 8-bit AdamW, whose per-256-block
    scales add 1/32 byte, left to the margin). An unknown optimizer counts as fp32 AdamW."""
    return GRADIENT_BYTES + STATE_BYTES.get(optimizer, 8)


@dataclass(frozen=True)
class ModelDims:
    """The shape numbers the estimate needs (a Llama-family decoder)."""

    hidden: int
    intermediate: int
    kv_dim: int
    layers: int

    @classmethod
    def from_config(cls, config) -> ModelDims:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.hidden_size, config.intermediate_size, config.num_key_value_heads * head_dim,
                   config.num_hidden_layers)


def activation_bytes_per_token(dims: ModelDims, mode: str, triton: bool = False, residual_bytes: int = 2,
                               dropout_masks: bool = False) -> int:
    """Peak activation bytes per token of a micro-batch under checkpointing ``mode``.

    Kept per layer until backward: ``none`` = layer input, normed input, mid residual (3h in the
    residual stream's dtype, ``residual_bytes``: 4 when a QLoRA model keeps fp32 embeddings) plus
    rotated q, attention output, k, v, gate, up (2h + 2kv + 2i in bf16); ``attention`` = layer input,
    mid residual (2h residual) + gate, up; ``transformers`` = layer input; ``offload`` = nothing on the GPU.
    Transient: the recomputed part of one layer, the SwiGLU backward temporaries (16 bytes per
    intermediate element in eager torch, 4 with the Triton kernels) and the loss head's hidden
    state and its gradient (2h residual). Offload keeps nothing per layer, so one layer's backward is its
    peak and is counted whole: also the restored input, its gradient and the incoming one (3h residual), the
    q/k/v gradients (2h + 2kv), and with ``dropout_masks`` (dropout drawn by torch, in eager passes) a mask,
    a masked input and a masked gradient of the widest LoRA input (3 × 2i). Measured on the H200 (8B shape,
    2,048 and 16,384 tokens a pass): 265 KB a token allocated and 273 reserved without dropout, 320 and 353
    with; this counts 287 and 373. (Before it counted 217 for both, and a plan within 11.5 GB reached 12.8.)
    """
    h, i, kv, r = dims.hidden, dims.intermediate, dims.kv_dim, residual_bytes
    full_layer = 3 * h * r + 2 * (2 * h + 2 * kv + 2 * i)
    kept = {"none": full_layer, "attention": 2 * h * r + 2 * 2 * i, "transformers": h * r, "offload": 0}[mode]
    recomputed = {"none": 0, "attention": h * r + 2 * (2 * h + 2 * kv)}.get(mode, full_layer)
    mlp_temp = (4 if triton else 16) * i
    backward = 0
    if mode == "offload":
        backward = 3 * h * r + 2 * (2 * h + 2 * kv) + (3 * 2 * i if dropout_masks else 0)
    return dims.layers * kept + recomputed + mlp_temp + 2 * h * r + backward


def plan_micro_batch(rows: int, row_tokens: int, dims: ModelDims, activation_budget: int,
                     checkpointing: Literal["auto", "none", "attention", "offload"] = "auto",
                     micro_batch: int | None = None, triton: bool = False, residual_bytes: int = 2,
                     no_recompute_first: bool = False, dropout_masks: bool = False) -> tuple[int, Recompute]:
    """(rows per forward pass, checkpointing) for batches of ``rows`` rows of at most ``row_tokens``.

    ``activation_budget`` is what activations may take (the caller has already subtracted weights,
    trainable state and the margin). A fixed ``micro_batch`` or ``checkpointing`` is kept as given;
    otherwise the largest divisor of ``rows`` that fits with at most attention recompute wins, then
    the least recompute for it; when nothing fits, the largest that fits with host offload, and one row
    with host offload when none does (the long-context mode; the caller refuses an explicit budget it
    cannot hold).
    ``no_recompute_first`` (CUDA graphs, which need passes without recompute): the largest micro-batch
    that fits without recompute wins over a larger one with it; measured on the H200, a graphed
    micro-batch 1 ran 1.12× faster than eager micro-batch 2 with attention recompute (round 6).
    ``dropout_masks``: dropout masks are drawn by torch (see ``activation_bytes_per_token``).
    """
    candidates = [micro_batch] if micro_batch else [m for m in range(rows, 0, -1) if rows % m == 0]
    modes = [checkpointing] if checkpointing != "auto" else ["none", "attention"]
    def fits(micro: int, mode: str) -> bool:
        per_token = activation_bytes_per_token(dims, mode, triton, residual_bytes, dropout_masks)
        return micro * row_tokens * per_token <= activation_budget

    if no_recompute_first and "none" in modes:
        for micro in candidates:
            if fits(micro, "none"):
                return micro, "none"
    fallback = ["offload"] if checkpointing == "auto" else []
    for group in (modes, fallback):
        for micro in candidates:
            for mode in group:
                if fits(micro, mode):
                    return micro, mode
    return candidates[-1], ("offload" if checkpointing == "auto" else checkpointing)
