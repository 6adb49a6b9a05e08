"""The adapter artifact: PEFT files + tokenizer + `lorafleet.json`, the manifest that describes them.

train writes it (`write_manifest`), push and serve check it (`load_manifest`, `verify_artifact`).
Every file but the manifest itself is listed in `files` with its sha256.

Format versions: 1 had a base fingerprint that did not cover the base's weight values (scheme 1);
2 has one that does (scheme 2, see `lorafleet.fingerprints`). Both load; push refuses format 1 and
says how to move on (re-train, or `lorafleet adapters restamp`).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lorafleet import atomic
from lorafleet.bounded_json import JsonRefused, load_json

MANIFEST_NAME = "lorafleet.json"
FORMAT_VERSION = 2
# What a format-2 manifest's base_fingerprint covers; lorafleet.fingerprints computes it.
BASE_FINGERPRINT_COVERAGE = (
    "sha256 (fingerprint scheme 2) over the base model's config.json (without _name_or_path and "
    "transformers_version), every safetensors tensor's name, dtype, shape and the sha256 of its bytes, and the "
    "tokenizer fingerprint. Not covered: shard layout, file names and safetensors __metadata__, "
    "generation_config.json, tokenizer files other than tokenizer.json / tokenizer_config.json / "
    "chat_template.jinja, and the inference code. Push accepts the adapter only on a base with this fingerprint. "
    "In format_version 1 manifests it is scheme 1, which left out the tensors' bytes."
)


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
    rank_pattern: dict[str, int] = Field(default_factory=dict, description="per-module rank overrides (PEFT rank_pattern)")
    alpha_pattern: dict[str, float] = Field(default_factory=dict, description="per-module alpha overrides (PEFT alpha_pattern)")
    layers_to_transform: list[int] | None = Field(None, description="the only layer indices adapted; None adapts every layer")
    layers_pattern: list[str] | None = Field(None, description="name(s) of the layer list that layers_to_transform indexes")


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

    format_version: int = Field(FORMAT_VERSION, description="manifest schema version (2: base_fingerprint covers weight values)")
    base_model: str = Field(description="name or path the adapter was trained on")
    base_fingerprint: str = Field(description=BASE_FINGERPRINT_COVERAGE)
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
    restamped_at: datetime | None = Field(
        None, description="when `adapters restamp` replaced a format-1 base_fingerprint: from then on the binding "
        "to the base's weight values rests on the word of whoever ran it, not on training",
    )

    @field_validator("format_version")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if not 1 <= value <= FORMAT_VERSION:
            raise ValueError(f"format_version {value} is not one this lorafleet reads (1..{FORMAT_VERSION}); upgrade lorafleet")
        return value


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
    """Parse `folder/lorafleet.json` (size- and depth-limited); raises ArtifactError saying what is missing or malformed."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {MANIFEST_NAME}: not a lorafleet artifact (train writes one)")
    try:
        return manifest_from_json(load_json(path, MANIFEST_NAME))
    except JsonRefused as exc:
        raise ArtifactError(str(exc)) from None


def manifest_from_json(document: object) -> Manifest:
    """Validate a parsed `lorafleet.json`; raises ArtifactError listing every malformed field."""
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors())
        raise ArtifactError(f"{MANIFEST_NAME} is malformed: {problems}") from None


def checksum_problems(listed: dict[str, str], actual: dict[str, str]) -> list[str]:
    """The manifest's file list (`listed`) against the files present (`actual`, path → sha256, manifest excluded). Pure."""
    problems: list[str] = []
    for name, expected in sorted(listed.items()):
        if name not in actual:
            problems.append(f"{name}: listed in the manifest but missing")
        elif actual[name] != expected:
            problems.append(f"{name}: sha256 is {actual[name][:12]}…, the manifest says {expected[:12]}…")
    for name in sorted(set(actual) - set(listed)):
        problems.append(f"{name}: present but not listed in the manifest")
    for required in ("adapter_config.json", "adapter_model.safetensors"):
        if required not in actual:
            problems.append(f"{required}: missing (an artifact holds PEFT files)")
    return problems


def verify_artifact(folder: Path) -> list[str]:
    """Re-check an artifact against its manifest; returns the problems found (empty when it verifies).

    Checks: the manifest parses; every listed file exists with the listed sha256; no unlisted file;
    every `adapter_config.json` field that changes what the adapter computes agrees with the manifest;
    the adapter's safetensors header is well formed (adapter_config.manifest_problems,
    safetensors_header.check_header).
    """
    from lorafleet.adapter_config import manifest_problems
    from lorafleet.safetensors_header import LORA_DTYPES, HeaderError, read_header

    folder = Path(folder)
    try:
        manifest = load_manifest(folder)
    except ArtifactError as exc:
        return [str(exc)]
    actual = file_checksums(folder)
    problems = checksum_problems(manifest.files, actual)
    if "adapter_config.json" in actual:
        try:
            problems += manifest_problems(load_json(folder / "adapter_config.json"), manifest.lora)
        except JsonRefused as exc:
            problems.append(str(exc))
    if "adapter_model.safetensors" in actual:
        try:
            read_header(folder / "adapter_model.safetensors", LORA_DTYPES)
        except HeaderError as exc:
            problems.append(f"corrupt safetensors header: {exc}")
    return problems
