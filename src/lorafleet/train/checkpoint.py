"""Checkpoints of a training run, for exact `--resume`.

A checkpoint is a folder `checkpoints/step-00000042/` inside the run's staging folder holding
  adapter.safetensors        the trainable (LoRA) parameters
  best_adapter.safetensors   the parameters at the best eval loss so far (when keep_best and evaluated)
  optimizer.pt               optimizer, scheduler and grad-scaler state (tensors + plain values only)
  rng.pt                     every process's torch RNG states (dropout), indexed by rank
  state.json                 `TrainState` (step, epoch, position in the epoch, early-stopping counters)
                             and `run_key`, the settings a resumed run must share
It is written under a `.partial` name and renamed, so a crash mid-write leaves the previous
checkpoint as the latest complete one; older checkpoints are deleted after a new one completes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_STATE = "state.json"


@dataclass
class TrainState:
    """Where a run is; everything needed to continue it, besides tensors."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # optimizer steps (global batches) of the current epoch already taken
    tokens_seen: int = 0  # non-padding input tokens, all processes
    train_loss: float | None = None  # loss of the last optimizer step
    eval_loss: float | None = None  # last eval loss
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    wall_time_s: float = 0.0  # training time accumulated over resumed segments


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message says why."""


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (the adapter), detached and contiguous, by name."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy `tensors` into the model's trainable parameters; raises CheckpointError on a name mismatch."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise CheckpointError(f"checkpoint does not match the adapter: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name].to(param.device, param.dtype))


def save_checkpoint(
    root: Path,
    state: TrainState,
    run_key: dict[str, Any],
    adapter: dict[str, torch.Tensor],
    best_adapter: dict[str, torch.Tensor] | None,
    optimizer_state: dict[str, Any],
    rng_states: list[dict[str, torch.Tensor]],
) -> Path:
    """Write a complete checkpoint for `state.step` under `root`, then drop the older ones; returns its folder."""
    final = root / f"step-{state.step:08d}"
    partial = root / f".step-{state.step:08d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({k: v.cpu() for k, v in adapter.items()}, partial / "adapter.safetensors")
    if best_adapter is not None:
        save_file({k: v.cpu() for k, v in best_adapter.items()}, partial / "best_adapter.safetensors")
    torch.save(optimizer_state, partial / "optimizer.pt")
    torch.save(rng_states, partial / "rng.pt")
    (partial / _STATE).write_text(json.dumps({"state": asdict(state), "run_key": run_key}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.rename(partial, final)
    for older in root.glob("step-*"):
        if older != final:
            shutil.rmtree(older, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint folder under `root`, or None."""
    found = sorted(p for p in Path(root).glob("step-*") if (p / _STATE).is_file())
    return found[-1] if found else None


@dataclass
class Checkpoint:
    """A checkpoint read back from disk (tensors on the CPU)."""

    state: TrainState
    adapter: dict[str, torch.Tensor]
    best_adapter: dict[str, torch.Tensor] | None
    optimizer_state: dict[str, Any]
    rng_states: list[dict[str, torch.Tensor]]


def load_checkpoint(folder: Path, run_key: dict[str, Any]) -> Checkpoint:
    """Read a checkpoint; raises CheckpointError when it was written by a run with other settings."""
    saved = json.loads((folder / _STATE).read_text())
    differing = sorted(k for k in set(run_key) | set(saved["run_key"]) if run_key.get(k) != saved["run_key"].get(k))
    if differing:
        details = ", ".join(f"{k}: {saved['run_key'].get(k)!r} → {run_key.get(k)!r}" for k in differing)
        raise CheckpointError(
            f"cannot resume from {folder}: it was written with other settings ({details}); "
            "resume with the same settings, or pass --force without --resume to start over"
        )
    best = folder / "best_adapter.safetensors"
    return Checkpoint(
        state=TrainState(**saved["state"]),
        adapter=load_file(folder / "adapter.safetensors"),
        best_adapter=load_file(best) if best.is_file() else None,
        optimizer_state=torch.load(folder / "optimizer.pt", weights_only=True),
        rng_states=torch.load(folder / "rng.pt", weights_only=True),
    )


def capture_rng() -> dict[str, torch.Tensor]:
    """This process's torch RNG states (CPU, and CUDA when present): what dropout draws from."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
