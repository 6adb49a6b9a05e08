"""Which architectures the fused path may train; every other one trains on the plain path, and says why.

The fused decoder layer (``layers.py``) computes a Llama-shaped layer: RMSNorm ``w * x / rms(x)``,
rotary attention through transformers' own attention functions, a SiLU-gated MLP, plain residual adds;
the fused loss (``linear_ce.py``) takes the head's logits with no post-processing. An architecture that
differs anywhere trains a different function with no error: measured on the H200 with tiny random models
against plain PEFT (issue 9), Llama, Mistral and Qwen2 agreed within 0.0002, while Gemma (norm ``1 + w``,
GELU) differed by 0.0026, Gemma 2 (logit softcapping) by 0.168 and Granite (residual and logit
multipliers) by 0.063. So the fused path is an allow-list: each entry below is proven by a test that
compares logits and LoRA gradients against plain PEFT on a tiny random model of that architecture
(``tests/train/fast/test_fast_architectures.py`` on the CPU, ``test_gpu_architectures.py`` on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from lorafleet.train.fast.facts import ModelFacts


@dataclass(frozen=True)
class Architecture:
    """The transformers classes of an allow-listed architecture, and how its attention passes the
    sliding window to transformers' attention function (the one place its attention code differs)."""

    layer: str
    attention: str
    norm: str
    sliding_window: Literal["none", "config", "attention"]


ALLOWED: dict[str, Architecture] = {
    "llama": Architecture("LlamaDecoderLayer", "LlamaAttention", "LlamaRMSNorm", "none"),
    "mistral": Architecture("MistralDecoderLayer", "MistralAttention", "MistralRMSNorm", "config"),
    "qwen2": Architecture("Qwen2DecoderLayer", "Qwen2Attention", "Qwen2RMSNorm", "attention"),
}
SILU = {"silu", "swish"}  # transformers' names for x * sigmoid(x)
# Rotary frequencies that depend on the sequence length: padding rows to a bucket would change them.
LENGTH_DEPENDENT_ROPE = {"dynamic", "longrope"}


def architecture_problem(model: ModelFacts) -> str | None:
    """Why the fused path must not train ``model`` (it then trains on the plain path), or None."""
    spec = ALLOWED.get(model.model_type)
    if spec is None:
        return (f"architecture {model.model_type!r} is not on the fused path's allow-list "
                f"({', '.join(ALLOWED)}): it trains on the plain path")
    if not model.layer_classes:
        return "no decoder layers found: plain path"
    found = {"decoder layer": (model.layer_classes, spec.layer), "attention": (model.attention_classes, spec.attention),
             "norm": (model.norm_classes, spec.norm)}
    for what, (classes, expected) in found.items():
        if classes != frozenset({expected}):
            return f"{model.model_type} {what} classes {sorted(classes)} are not {expected}: plain path"
    if model.hidden_act not in SILU:
        return f"{model.model_type} with hidden_act {model.hidden_act!r} (the fused MLP is SiLU-gated): plain path"
    if model.hooked:
        return "forward hooks on the decoder layers (the fused layers would skip them): plain path"
    return None


def padding_problem(model: ModelFacts) -> str | None:
    """Why rows of ``model`` must not be padded to a length bucket (CUDA graphs pad them), or None."""
    changing = sorted(model.rope_types & LENGTH_DEPENDENT_ROPE)
    if changing:
        return f"rotary frequencies depend on the sequence length (rope_type {', '.join(changing)}): rows are not padded"
    return None
