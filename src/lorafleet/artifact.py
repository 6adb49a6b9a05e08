"""The adapter artifact: PEFT files + tokenizer + `lorafleet.json`, the manifest that describes them.

train writes it (`write_manifest`), push and serve check it (`load_manifest`, `verify_artifact`).
Every file but the manifest itself is listed in `files` with its sha256.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorafleet import atomic

MANIFEST_NAME = "lorafleet.json"
FORMAT_VERSION = 1


class ArtifactError(ValueError):
    """An artifact that is missing, malformed or does not match its manifest."""


class LoraSpec(BaseModel):
    """How the adapter was built."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(gt=0, description="LoRA rank")
    alpha: float = Field(gt=0, description="LoRA scaling numerator")
    dropout: float = Field(ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] = Field(min_length=1, description="module names the adapter wraps")
    use_rslora: bool = Field(description="rank-stabilized scaling alpha / sqrt(r)")
    use_dora: bool = Field(description="weight-decomposed LoRA (vLLM cannot serve it)")
    quantization: Literal["none", "nf4"] = Field(description="how the base was held during training")


class DatasetSpec(BaseModel):
    """The prepared dataset the adapter was trained on."""

    sha256: str = Field(description="sha256 over the prepared dataset's files")
    train_samples: int
    eval_samples: int
    report: dict = Field(default_factory=dict, description="the prepare report's totals")


class TrainMetrics(BaseModel):
    """How training went."""

    train_loss: float | None = None
    eval_loss: float | None = None
    steps: int = 0
    tokens_seen: int = 0
    wall_time_s: float = 0.0
    tokens_per_s: float = 0.0


class Manifest(BaseModel):
    """`lorafleet.json`: DESIGN.md's manifest schema."""

    format_version: int = FORMAT_VERSION
    base_model: str = Field(description="name or path the adapter was trained on")
    base_fingerprint: str = Field(description="sha256 of the base model; the adapter loads only on this base")
    tokenizer_fingerprint: str = Field(description="sha256 of the tokenizer and chat template used in prepare")
    max_seq_length: int = Field(gt=0, description="training sequence length; serving never allows longer")
    lora: LoraSpec
    dataset: DatasetSpec
    metrics: TrainMetrics
    files: dict[str, str] = Field(description="relative path -> sha256 of every file but the manifest")
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    lorafleet_version: str
    library_versions: dict[str, str] = Field(default_factory=dict)
    speedup_plan: dict[str, Any] = Field(
        default_factory=dict, description="what the run's speed-up plan decided (lorafleet.train.fast.SpeedupPlan)"
    )


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def file_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under `folder` except the manifest, keyed by POSIX relative path."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != MANIFEST_NAME
    }


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write `lorafleet.json` into `folder` atomically (temp file + rename); returns its path."""
    path = Path(folder) / MANIFEST_NAME
    atomic.write_text(path, manifest.model_dump_json(indent=2) + "\n")
    return path


def load_manifest(folder: Path) -> Manifest:
    """Parse `folder/lorafleet.json`; raises ArtifactError saying what is missing or malformed."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {MANIFEST_NAME}: not a lorafleet artifact (train writes one)")
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors())
        raise ArtifactError(f"{path} is malformed: {problems}") from None


def verify_artifact(folder: Path) -> list[str]:
    """Re-check an artifact against its manifest; returns the problems found (empty when it verifies).

    Checks: the manifest parses; every listed file exists with the listed sha256; no unlisted file;
    `adapter_config.json` agrees with the manifest's rank, alpha and target modules.
    """
    folder = Path(folder)
    try:
        manifest = load_manifest(folder)
    except ArtifactError as exc:
        return [str(exc)]
    problems: list[str] = []
    actual = file_checksums(folder)
    for name, expected in sorted(manifest.files.items()):
        if name not in actual:
            problems.append(f"{name}: listed in the manifest but missing")
        elif actual[name] != expected:
            problems.append(f"{name}: sha256 is {actual[name][:12]}…, the manifest says {expected[:12]}…")
    for name in sorted(set(actual) - set(manifest.files)):
        problems.append(f"{name}: present but not listed in the manifest")
    for required in ("adapter_config.json", "adapter_model.safetensors"):
        if required not in actual:
            problems.append(f"{required}: missing (an artifact holds PEFT files)")
    if "adapter_config.json" in actual:
        problems += _adapter_config_problems(folder / "adapter_config.json", manifest.lora)
    return problems


def _adapter_config_problems(path: Path, lora: LoraSpec) -> list[str]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"adapter_config.json: not valid JSON ({exc})"]
    problems = []
    if config.get("r") != lora.r:
        problems.append(f"adapter_config.json: r is {config.get('r')}, the manifest says {lora.r}")
    if float(config.get("lora_alpha", -1)) != lora.alpha:
        problems.append(f"adapter_config.json: lora_alpha is {config.get('lora_alpha')}, the manifest says {lora.alpha}")
    targets = config.get("target_modules")
    targets = sorted(targets) if isinstance(targets, list) else targets
    if targets != sorted(lora.target_modules):
        problems.append(f"adapter_config.json: target_modules is {targets}, the manifest says {sorted(lora.target_modules)}")
    return problems
