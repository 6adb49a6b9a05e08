"""`lorafleet train` and `lorafleet verify`."""

from __future__ import annotations

from pathlib import Path

import typer

from lorafleet.cli.common import console, err_console, fail
from lorafleet.models import EMBEDDED_DEFAULT, ModelError


def register(app: typer.Typer) -> None:
    """Add `train` and `verify` to the top-level app."""
    app.command("train")(train)
    app.command("verify")(verify)


def train(
    data: Path = typer.Option(..., "--data", help="Prepared dataset folder (from `lorafleet prepare`)."),
    out: Path = typer.Option(..., "--out", help="Artifact folder to create (written atomically)."),
    config_file: Path | None = typer.Option(None, "--config", help="YAML file of train options; flags override it."),
    model: str | None = typer.Option(None, "--model", help=f"Base model (default {EMBEDDED_DEFAULT!r})."),
    epochs: int | None = typer.Option(None, "--epochs", help="Passes over the train split."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after N optimizer steps."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Samples per micro-batch per process."),
    grad_accum: int | None = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    lora_r: int | None = typer.Option(None, "--lora-r", help="LoRA rank."),
    lora_alpha: float | None = typer.Option(None, "--lora-alpha", help="LoRA alpha."),
    lora_dropout: float | None = typer.Option(None, "--lora-dropout", help="Dropout on the LoRA input."),
    target_modules: str | None = typer.Option(None, "--target-modules", help="Comma-separated module names, or all-linear."),
    rslora: bool | None = typer.Option(None, "--rslora/--no-rslora", help="Rank-stabilized LoRA scaling (default on)."),
    dora: bool | None = typer.Option(None, "--dora/--no-dora", help="Weight-decomposed LoRA (vLLM cannot serve it)."),
    quantization: str | None = typer.Option(None, "--quantization", help="none | nf4 (QLoRA, CUDA only)."),
    precision: str | None = typer.Option(None, "--precision", help="auto | bf16 | fp16 | fp32."),
    gradient_checkpointing: bool | None = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations to save memory."
    ),
    packing: bool | None = typer.Option(None, "--packing/--no-packing", help="Pack samples (needs flash-attention)."),
    eval_every: int | None = typer.Option(None, "--eval-every", help="Evaluate every N steps (always at the end)."),
    early_stopping_patience: int | None = typer.Option(None, "--early-stopping-patience", help="Evaluations without improvement before stopping."),
    save_every: int | None = typer.Option(None, "--save-every", help="Also checkpoint every N steps (always each epoch)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for data order, LoRA init and dropout."),
    tensorboard: bool | None = typer.Option(None, "--tensorboard/--no-tensorboard", help="Also write TensorBoard events."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run for --out."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out (and discard its checkpoints)."),
) -> None:
    """Train a LoRA / QLoRA adapter on a prepared dataset and write a self-describing artifact.

    Runs unchanged under `torchrun --nproc_per_node N` (data parallel; --batch-size is per process).
    """
    options = dict(locals())  # every flag, before any other local name exists
    import os
    from lorafleet.config import ConfigError, load_train_config
    from lorafleet.data.dataset import DatasetError
    from lorafleet.train.checkpoint import CheckpointError
    from lorafleet.train.preflight import PreflightError
    from lorafleet.train.save import OutputError
    from lorafleet.train.trainer import train_adapter

    overrides = {k: v for k, v in options.items() if k not in {"data", "out", "config_file"}}
    overrides |= {"resume": resume or None, "force": force or None}  # an absent flag leaves the YAML's value
    if target_modules is not None and target_modules != "all-linear":
        overrides["target_modules"] = [m.strip() for m in target_modules.split(",") if m.strip()]
    try:
        config = load_train_config(config_file, overrides)
        manifest = train_adapter(data, out, config)
    except (ConfigError, PreflightError, OutputError, DatasetError, ModelError, CheckpointError) as exc:
        fail(str(exc))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports
    m = manifest.metrics
    console.print(
        f"[bold green]trained[/] {out}: {m.steps} steps, train loss {m.train_loss:.4f}, "
        f"eval loss {m.eval_loss if m.eval_loss is None else round(m.eval_loss, 4)}, {m.tokens_per_s:,.0f} tokens/s",
        highlight=False,
    )


def verify(artifact: Path = typer.Argument(..., help="Artifact folder (with lorafleet.json).")) -> None:
    """Re-check an artifact's files against its manifest; exit 1 when anything is wrong."""
    from lorafleet.artifact import verify_artifact

    problems = verify_artifact(artifact)
    if problems:
        for problem in problems:
            err_console.print(f"[bold red]problem:[/] {problem}", highlight=False)
        raise typer.Exit(1)
    console.print(f"[bold green]OK[/] {artifact}", highlight=False)
