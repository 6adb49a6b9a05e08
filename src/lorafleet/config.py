"""Typed configuration: `TrainConfig` for `lorafleet train`, with its CUDA speed-ups in one nested section.

A YAML file only serializes these models; `load_train_config` reads one and applies CLI overrides
on top, so a flag always wins over the file and the file over the defaults. Unknown keys are
errors (a typo in a config must not silently fall back to a default), and the flat speed-up keys of
earlier versions are errors that name their new place under `speedups:`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorafleet.models import EMBEDDED_DEFAULT

Precision = Literal["auto", "bf16", "fp16", "fp32"]
Quantization = Literal["none", "nf4"]
Recompute = Literal["auto", "none", "attention", "offload"]


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the field."""


class SpeedupConfig(BaseModel):
    """The CUDA speed-ups of `lorafleet.train.fast`. Each computes what plain transformers + PEFT computes
    (up to bf16 rounding order) unless its description says otherwise; `plan_speedups` decides once per run
    what applies (CUDA only, allow-listed architectures only) and the training log says why anything is off."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(
        True, description="use the fast CUDA path at all; false = plain transformers + PEFT (the seed stack's path)"
    )
    fused_lora: bool = Field(True, description="each LoRA linear as one fused function (base matmul + LoRA update)")
    fused_mlp: bool = Field(
        True, description="RMSNorm + SwiGLU MLP as one function saving only input, gate and up (needs fused_lora)"
    )
    fused_elementwise: bool = Field(
        True, description="RMSNorm and SiLU·mul as Triton kernels (liger-kernel; off with a note if they fail their check)"
    )
    fused_cross_entropy: bool = Field(
        True, description="the loss from hidden states in chunks, never building the logits"
    )
    frozen_bf16: bool = Field(
        False,
        description="QLoRA: keep frozen embeddings/norms/head in bf16 (saves memory; the residual stream is then bf16 "
        "instead of fp32, so results differ slightly from plain PEFT)",
    )
    bf16_storage: bool = Field(
        True, description="QLoRA: store the frozen fp32 embedding/head in bf16 when their values are bf16 (exact; saves memory)"
    )
    triton_rope: bool = Field(
        True, description="Liger's RoPE kernel in the fused attention (needs fused_elementwise; 1.09x with CUDA graphs on the H200)"
    )
    triton_dequant: bool = Field(
        True, description="QLoRA: NF4 weights dequantized by one Triton kernel (bit for bit bitsandbytes' result, which "
        "takes three kernels; off with a note if it fails its check)"
    )
    cuda_graphs: bool = Field(
        True,
        description="no recompute (any number of processes): replay each pass's forward + backward from a CUDA graph, captured per "
        "pass width (passes right-padded, no attention mask, to a few widths chosen per dataset; exact for causal LM)",
    )
    paged_optimizer: bool = Field(
        False,
        description="QLoRA: bitsandbytes' PagedAdamW8bit, the seed stack's optimizer and the benchmark baseline's "
        "(it syncs the GPU after every parameter); false = lorafleet's AdamW8bit, the same update in device memory without syncs",
    )
    recompute: Recompute = Field(
        "auto",
        description="what the fused layers recompute in backward: auto = the least recompute that fits the memory at the "
        "largest micro-batch, or offload at the largest micro-batch that fits when nothing else does; none; attention; "
        "offload = whole layers from inputs kept in host memory (least GPU memory, longest contexts; CUDA graphs "
        "when lora_dropout is 0). The plain path uses gradient_checkpointing instead",
    )
    micro_batch: int | Literal["auto"] = Field(
        "auto",
        description="rows per forward pass, a divisor of batch_size (auto = the largest that fits the memory on the fast "
        "path, batch_size elsewhere); the optimizer step and the loss are the same either way",
    )

    @field_validator("micro_batch")
    @classmethod
    def _positive_micro_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("micro_batch must be 'auto' or a positive number of rows")
        return value


# Flat keys of earlier versions, and where each went (an old YAML gets an error naming the new key).
_MOVED = {name: f"speedups.{name}" for name in (
    "fused_lora", "fused_mlp", "fused_elementwise", "fused_cross_entropy", "frozen_bf16", "bf16_storage",
    "triton_rope", "cuda_graphs", "paged_optimizer", "micro_batch",
)}
_MOVED["checkpointing"] = (
    "speedups.recompute (auto | none | attention | offload); transformers' own checkpointing ('full') is "
    "gradient_checkpointing: true with speedups.enabled: false"
)
_REMOVED = {
    "triton_dropout": "the Triton dropout kernel measured slower on its own (BENCHMARKS.md, round 4); it now runs only "
    "inside CUDA graphs (speedups.cuda_graphs), after a check on the device",
}


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
    max_memory_gb: float | None = Field(
        None, gt=0,
        description="peak GPU memory the run may reach on each process, in GB (10^9 bytes), for users who share a GPU: "
        "the CUDA speed-up plan picks micro-batch and recompute to fit it and refuses the run when nothing does "
        "(default: what is allocated plus 90% of what is free)",
    )
    lora_r: int = Field(32, ge=1, description="LoRA rank")
    lora_alpha: float = Field(64, gt=0, description="LoRA scaling numerator")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to wrap; 'all-linear' = every linear layer of the decoder"
    )
    rslora: bool = Field(True, description="rank-stabilized scaling alpha / sqrt(r)")
    dora: bool = Field(False, description="weight-decomposed LoRA (trains on the plain path; vLLM cannot serve it)")
    quantization: Quantization = Field("none", description="hold the base in 4-bit NF4 (QLoRA, CUDA only)")
    precision: Precision = Field("auto", description="auto = bf16 on CUDA with bf16 support, else fp32")
    gradient_checkpointing: bool = Field(
        True,
        description="plain path: transformers' own activation checkpointing (every layer recomputed in backward); the "
        "fast CUDA path plans its own recompute (speedups.recompute) instead",
    )
    packing: bool = Field(False, description="pack samples into rows (needs a varlen attention backend)")
    speedups: SpeedupConfig = Field(
        default_factory=SpeedupConfig, description="CUDA speed-ups (lorafleet.train.fast); no effect on a CPU"
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

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for key in values:
                if key in _MOVED:
                    raise ValueError(f"'{key}' moved: write it as {_MOVED[key]}")
                if key in _REMOVED:
                    raise ValueError(f"'{key}' was removed: {_REMOVED[key]}")
        return values

    @field_validator("target_modules")
    @classmethod
    def _non_empty_targets(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("target_modules must name at least one module, or be 'all-linear'")
        return value

    @model_validator(mode="after")
    def _micro_batch_divides_batch(self) -> TrainConfig:
        micro = self.speedups.micro_batch
        if isinstance(micro, int) and self.batch_size % micro:
            raise ValueError(f"speedups.micro_batch {micro} must divide batch_size {self.batch_size}")
        return self


def field_help(name: str) -> str:
    """The description of TrainConfig field `name` (the CLI's help text comes from here)."""
    return TrainConfig.model_fields[name].description or ""


def load_train_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults ← YAML file at `path` ← `overrides` (None values are ignored: an unset flag).

    Nested sections merge key by key, so an override of `speedups.cuda_graphs` keeps the file's other
    speed-up keys. Raises ConfigError naming the file and the field when something does not validate.
    """
    values: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        where = str(path)
        values = read_yaml_options(path, ConfigError, "config")
    _merge(values, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid train config ({where}): {problems}") from None


def read_yaml_options(path: Path, error: type[Exception], what: str) -> dict[str, Any]:
    """The option: value mapping of a YAML file, '-' in keys spelled '_' at every level.

    Raises `error` naming the file (as "cannot read {what} PATH" or "{what} PATH must be a mapping").
    """
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise error(f"{what} {path} must be a mapping of option: value, not {type(loaded).__name__}")
    return _normalized(loaded)


def _normalized(values: dict) -> dict[str, Any]:
    """Keys with '-' spelled with '_', at every level."""
    return {str(k).replace("-", "_"): _normalized(v) if isinstance(v, dict) else v for k, v in values.items()}


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
