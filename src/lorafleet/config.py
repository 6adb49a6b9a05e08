"""Typed configuration: `TrainConfig` for `lorafleet train`.

A YAML file only serializes these models; `load_train_config` reads one and applies CLI overrides
on top, so a flag always wins over the file and the file over the defaults. Unknown keys are
errors (a typo in a config must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lorafleet.models import EMBEDDED_DEFAULT

Precision = Literal["auto", "bf16", "fp16", "fp32"]
Quantization = Literal["none", "nf4"]
Checkpointing = Literal["auto", "full", "attention", "none", "offload"]


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the field."""


class TrainConfig(BaseModel):
    """Every option of `lorafleet train`, with the seed's defaults."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(EMBEDDED_DEFAULT, description="base model: the embedded default or a local Hugging Face folder")
    epochs: int = Field(1, ge=1, description="passes over the train split")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    batch_size: int = Field(4, ge=1, description="samples per micro-batch on each process")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    lr: float = Field(2e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay on the LoRA matrices")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="fraction of steps spent warming up the LR")
    max_grad_norm: float = Field(0.3, gt=0, description="gradient-norm clipping threshold")
    lora_r: int = Field(32, ge=1, description="LoRA rank")
    lora_alpha: float = Field(64, gt=0, description="LoRA scaling numerator")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to wrap; 'all-linear' = every linear layer of the decoder"
    )
    rslora: bool = Field(True, description="rank-stabilized scaling alpha / sqrt(r)")
    dora: bool = Field(False, description="weight-decomposed LoRA (trains, but vLLM cannot serve it)")
    quantization: Quantization = Field("none", description="hold the base in 4-bit NF4 (QLoRA, CUDA only)")
    precision: Precision = Field("auto", description="auto = bf16 on CUDA with bf16 support, else fp32")
    gradient_checkpointing: bool = Field(True, description="recompute activations in backward to save memory")
    packing: bool = Field(False, description="pack samples into rows (needs a varlen attention backend)")
    # CUDA speed-ups (lorafleet.train.speedups): ignored on CPU; each computes what plain PEFT computes
    # up to bf16 rounding order, except frozen_bf16 (off by default, see its description).
    fused_lora: bool = Field(True, description="CUDA: each LoRA linear as one fused function (base matmul + LoRA update)")
    fused_mlp: bool = Field(True, description="CUDA: RMSNorm + SwiGLU MLP as one function saving only input, gate, up")
    fused_elementwise: bool = Field(
        True, description="CUDA: RMSNorm and SiLU·mul as Triton kernels (liger-kernel; off with a note if it fails its check)"
    )
    fused_cross_entropy: bool = Field(
        True, description="CUDA, one process: loss from hidden states in chunks, never building the logits"
    )
    frozen_bf16: bool = Field(
        False,
        description="CUDA QLoRA: keep frozen embeddings/norms/head in bf16 (saves memory; the residual stream is then "
        "bf16 instead of fp32, so results differ slightly from plain PEFT)",
    )
    bf16_storage: bool = Field(
        True, description="CUDA QLoRA: store the frozen fp32 embedding/head in bf16 when their values are bf16 (exact; saves memory)"
    )
    triton_dropout: bool = Field(
        False, description="CUDA: draw LoRA dropout masks inside a Triton kernel (opt-in: measured slower on the H200)"
    )
    triton_rope: bool = Field(
        True, description="CUDA: Liger's RoPE kernel in the fused attention (with CUDA graphs 1.09x faster on the H200)"
    )
    cuda_graphs: bool = Field(
        True,
        description="CUDA, one process, no recompute: replay each pass's forward + backward from a CUDA graph, "
        "captured per row length (rows right-padded to a multiple of 64, no attention mask; exact for causal LM)",
    )
    paged_optimizer: bool = Field(
        False,
        description="CUDA QLoRA: bitsandbytes' paged 8-bit AdamW (syncs the GPU after every parameter) instead of "
        "lorafleet's 8-bit AdamW in device memory (the same update, no syncs)",
    )
    checkpointing: Checkpointing = Field(
        "auto",
        description="CUDA: what to recompute in backward. auto = least recompute that fits the memory at the largest "
        "micro-batch; full = transformers' own (per gradient_checkpointing); attention = attention only; "
        "none; offload = whole layers from inputs kept in host memory (longest contexts)",
    )
    micro_batch: int | Literal["auto"] = Field(
        "auto",
        description="CUDA: rows per forward pass, a divisor of batch_size (auto = the largest that fits the memory); "
        "the optimizer step and the loss are the same either way",
    )
    eval_every: int | None = Field(None, ge=1, description="evaluate every N optimizer steps (always at the end)")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after N evaluations without a lower eval loss"
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="an eval loss counts as an improvement only when it beats the best by more than this"
    )
    keep_best: bool = Field(True, description="save the adapter with the lowest eval loss rather than the last")
    save_every: int | None = Field(None, ge=1, description="also checkpoint every N optimizer steps")
    log_every: int = Field(1, ge=1, description="append a metrics.jsonl line every N optimizer steps")
    length_group_window: int = Field(
        64, ge=1, description="batches per shuffled window sorted by length (1 = no length grouping)"
    )
    seed: int = Field(0, description="seeds data order, LoRA init and dropout")
    tensorboard: bool = Field(False, description="also write TensorBoard events to <out>.tensorboard/")
    resume: bool = Field(False, description="continue from the last checkpoint of an interrupted run")
    force: bool = Field(False, description="replace an existing non-empty output folder")

    @field_validator("micro_batch")
    @classmethod
    def _positive_micro_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("micro_batch must be 'auto' or a positive number of rows")
        return value

    @field_validator("target_modules")
    @classmethod
    def _non_empty_targets(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("target_modules must name at least one module, or be 'all-linear'")
        return value


def load_train_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults ← YAML file at `path` ← `overrides` (None values are ignored: an unset flag).

    Raises ConfigError naming the file and the field when something does not validate.
    """
    values: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping of option: value, not {type(loaded).__name__}")
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid train config ({where}): {problems}") from None
