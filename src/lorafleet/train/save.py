"""Where a run writes, and how the finished artifact appears atomically.

For an output `runs/my-adapter` the run works in `runs/my-adapter.partial/` (staging):
  checkpoints/       resumable checkpoints (see checkpoint.py)
  metrics.jsonl      appended while training
  artifact/          the artifact assembled at the end, then renamed to `runs/my-adapter`
The output folder therefore either does not exist or is complete; the staging folder is removed
after a successful run and kept after an interrupted one, for `--resume`. With --tensorboard, events
go to `runs/my-adapter.tensorboard/`, next to the artifact, so they outlive the staging folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from lorafleet.artifact import DatasetSpec, LoraSpec, Manifest, TrainMetrics, file_checksums, write_manifest
from lorafleet.atomic import replace_dir
from lorafleet.config import TrainConfig
from lorafleet.train.checkpoint import TrainState
from lorafleet.train.data import TrainData
from lorafleet.train.fast.plan import SpeedupPlan
from lorafleet.train.preflight import ModelInfo

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class OutputError(ValueError):
    """The output folder cannot be written as asked; the message says which flag to use."""


@dataclass(frozen=True)
class RunPaths:
    out: Path

    @property
    def staging(self) -> Path:
        return self.out.parent / f"{self.out.name}.partial"

    @property
    def checkpoints(self) -> Path:
        return self.staging / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.staging / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.out.parent / f"{self.out.name}.tensorboard"

    @property
    def assembled(self) -> Path:
        return self.staging / "artifact"


def check_output(paths: RunPaths, resume: bool, force: bool) -> None:
    """Refuse to overwrite a finished artifact without --force, or to discard an interrupted run's checkpoints silently."""
    if paths.out.exists() and (not paths.out.is_dir() or any(paths.out.iterdir())) and not force:
        raise OutputError(f"{paths.out} exists and is not empty; pass --force to replace it, or choose another --out")
    has_checkpoints = paths.checkpoints.is_dir() and any(paths.checkpoints.glob("step-*"))
    if resume and not has_checkpoints:
        raise OutputError(f"--resume: no checkpoint found in {paths.checkpoints} (nothing to resume)")
    if not resume and has_checkpoints and not force:
        raise OutputError(
            f"{paths.staging} holds checkpoints of an interrupted run; pass --resume to continue it, "
            "or --force to discard them and start over"
        )


def prepare_staging(paths: RunPaths, resume: bool) -> None:
    """Create the staging folder; a fresh (non-resumed) run starts from an empty one."""
    if not resume:
        shutil.rmtree(paths.staging, ignore_errors=True)
    paths.staging.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(paths.assembled, ignore_errors=True)  # a half-assembled artifact from a crash


def write_artifact(paths: RunPaths, peft_model, tokenizer, manifest: Manifest) -> Manifest:
    """Assemble adapter files, tokenizer, metrics and `lorafleet.json` in staging, then rename into place.

    `manifest` holds every field but `files`, which is computed here; returns the manifest written.
    """
    folder = paths.assembled
    folder.mkdir(parents=True)
    peft_model.save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub: not part of the artifact
    tokenizer.save_pretrained(folder)
    if paths.metrics.is_file():
        shutil.copyfile(paths.metrics, folder / "metrics.jsonl")
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"PEFT did not write {missing}; refusing to publish an incomplete artifact")
    manifest = manifest.model_copy(update={"files": file_checksums(folder)})
    write_manifest(folder, manifest)
    replace_dir(folder, paths.out)
    shutil.rmtree(paths.staging, ignore_errors=True)
    return manifest


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped the adapter (bitsandbytes only when installed)."""
    versions = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_manifest(*, config: TrainConfig, base_model: str, model_info: ModelInfo, data: TrainData,
                   target_modules: list[str], state: TrainState, plan: SpeedupPlan) -> Manifest:
    """The manifest of a finished run, every field but `files` (`write_artifact` fills it)."""
    from lorafleet import __version__

    report = data.report
    return Manifest(
        base_model=base_model,
        base_fingerprint=model_info.model_fingerprint,
        tokenizer_fingerprint=model_info.tokenizer_fingerprint,
        max_seq_length=report.max_seq_length,
        lora=LoraSpec(
            r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout, target_modules=sorted(target_modules),
            use_rslora=config.rslora, use_dora=config.dora, quantization=config.quantization,
        ),
        dataset=DatasetSpec(
            sha256=data.sha256, train_samples=report.train, eval_samples=report.eval,
            report={
                "lines": report.lines, "accepted": report.accepted, "rejected": report.rejected,
                "duplicates": report.duplicates, "truncated": report.truncated, "tokens": report.tokens.model_dump(),
            },
        ),
        metrics=TrainMetrics(
            train_loss=state.train_loss,
            eval_loss=state.best_eval_loss if config.keep_best and state.best_eval_loss is not None else state.eval_loss,
            steps=state.step, tokens_seen=state.tokens_seen, wall_time_s=round(state.wall_time_s, 3),
            tokens_per_s=round(state.tokens_seen / state.wall_time_s, 2) if state.wall_time_s else 0.0,
        ),
        files={},
        lorafleet_version=__version__,
        library_versions=library_versions(),
        speedup_plan=plan.summary(),
    )
