"""Preflight: refuse a training run that cannot work, before any weights are loaded.

`preflight` is a pure function of the config, the prepared dataset's report, facts about the base
model and facts about the device; `DeviceInfo.detect()` and `ModelInfo.read()` are the only I/O and
run outside it, so every refusal is tested with made-up inputs. These are the seed's pitfalls
enforced by code: fp16 with QLoRA, QLoRA off CUDA, a dataset templated for another tokenizer, etc.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lorafleet.config import TrainConfig
from lorafleet.data.dataset import PrepareReport
from lorafleet.train.fast.plan import data_parallel_problem

ResolvedPrecision = Literal["bf16", "fp16", "fp32"]


class PreflightError(ValueError):
    """The run is refused; the message lists every reason, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("refusing to train:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class DeviceInfo:
    """What the training device supports."""

    kind: Literal["cpu", "cuda"]
    bf16: bool  # native bf16 arithmetic (CUDA compute capability >= 8, or AVX512-BF16/AMX on CPU)
    bitsandbytes: bool  # the bitsandbytes package is importable
    flash_attn: bool = False  # flash-attention is importable (needed for packing without cross-attention)
    name: str = ""

    @classmethod
    def detect(cls) -> DeviceInfo:
        """Inspect this process's device: CUDA when available, else the CPU."""
        import torch

        has_bnb = importlib.util.find_spec("bitsandbytes") is not None
        has_flash = importlib.util.find_spec("flash_attn") is not None
        if torch.cuda.is_available():
            return cls("cuda", torch.cuda.is_bf16_supported(), has_bnb, has_flash, torch.cuda.get_device_name())
        return cls("cpu", _cpu_has_bf16(), has_bnb, False, "cpu")


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class ModelInfo:
    """What preflight needs to know about the base model, read without loading its weights."""

    model_fingerprint: str
    tokenizer_fingerprint: str
    max_position_embeddings: int | None

    @classmethod
    def read(cls, path: Path) -> ModelInfo:
        from lorafleet.models import model_fingerprint, tokenizer_fingerprint

        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        return cls(model_fingerprint(path), tokenizer_fingerprint(path), config.get("max_position_embeddings"))


@dataclass(frozen=True)
class PreflightResult:
    """An accepted run: the precision it will use and warnings worth printing."""

    precision: ResolvedPrecision
    warnings: list[str] = field(default_factory=list)


def resolve_precision(config: TrainConfig, device: DeviceInfo) -> ResolvedPrecision:
    """`auto` → bf16 on CUDA with bf16 support, else fp32 (emulated bf16 on a CPU is slower than fp32)."""
    if config.precision != "auto":
        return config.precision
    if device.kind == "cuda" and device.bf16:
        return "bf16"
    return "fp32"


def preflight(config: TrainConfig, report: PrepareReport, model: ModelInfo, device: DeviceInfo,
              world_size: int = 1) -> PreflightResult:
    """Check a run of ``world_size`` processes before any compute; returns the resolved precision or raises
    PreflightError with every problem."""
    problems: list[str] = []
    warnings: list[str] = []
    precision = resolve_precision(config, device)

    if config.quantization == "nf4":
        if precision == "fp16":
            problems.append(
                "fp16 with nf4 (QLoRA) fails with 'Attempting to unscale FP16 gradients'; "
                "use --precision bf16 or auto (QLoRA computes in bf16)"
            )
        if device.kind != "cuda":
            problems.append("--quantization nf4 needs a CUDA GPU (bitsandbytes 4-bit); no CUDA device is available")
        if not device.bitsandbytes:
            problems.append("--quantization nf4 needs the bitsandbytes package: pip install 'lorafleet[gpu]'")
        if precision == "fp32" and device.kind == "cuda":
            warnings.append("nf4 computes in bf16 regardless of --precision fp32")
    if precision == "bf16" and not device.bf16:
        problems.append(
            f"--precision bf16 needs native bf16 support, which this {device.kind} ({device.name or 'unknown'}) lacks; "
            "use --precision fp32 or auto"
        )
    if precision == "fp16" and device.kind == "cpu":
        problems.append("--precision fp16 is for CUDA (it needs a gradient scaler on GPU); use fp32 on CPU")

    if report.tokenizer_fingerprint != model.tokenizer_fingerprint:
        problems.append(
            f"the dataset was prepared for tokenizer {report.tokenizer_fingerprint[:12]}… but model {config.model!r} "
            f"has tokenizer {model.tokenizer_fingerprint[:12]}…; run `lorafleet prepare --model {config.model}` again"
        )
    elif report.model_fingerprint != model.model_fingerprint:
        problems.append(
            f"the dataset was prepared for model {report.model!r} (fingerprint {report.model_fingerprint[:12]}…), "
            f"not {config.model!r} ({model.model_fingerprint[:12]}…); prepare it again with --model {config.model}"
        )
    if report.tokens.trained <= 0 or report.train <= 0:
        problems.append(
            f"the dataset has no trained tokens ({report.train} train samples, {report.tokens.trained} trained tokens): "
            "nothing to learn from"
        )
    if model.max_position_embeddings is not None and report.max_seq_length > model.max_position_embeddings:
        problems.append(
            f"the dataset's max_seq_length {report.max_seq_length} exceeds the model's context "
            f"{model.max_position_embeddings} (max_position_embeddings); prepare with a smaller --max-seq-length"
        )
    if config.packing and not device.flash_attn:
        problems.append(
            "--packing needs flash-attention (varlen attention through position_ids) so that packed samples "
            "never attend to each other; it is not available here, train without --packing"
        )
    parallel = data_parallel_problem(config, world_size)
    if parallel:
        problems.append(parallel)
    if config.dora:
        warnings.append("DoRA adapters train, but vLLM cannot serve them; lorafleet serve will refuse this artifact")
    if config.max_steps is None and config.eval_every is None and config.early_stopping_patience is not None:
        warnings.append("early stopping evaluates only at the end without --eval-every; it cannot stop early")
    if problems:
        raise PreflightError(problems)
    return PreflightResult(precision, warnings)
