"""`lorafleet train` and `lorafleet verify`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from lorafleet.cli.common import console, err_console, fail
from lorafleet.config import field_help
from lorafleet.models import ModelError


def register(app: typer.Typer) -> None:
    """Add `train` and `verify` to the top-level app."""
    app.command("train")(train)
    app.command("verify")(verify)


def _option(name: str, *flags: str):
    """A flag for TrainConfig field `name`, its help text the field's description."""
    return typer.Option(None, *flags, help=field_help(name) + ".")


def train(
    data: Path = typer.Option(..., "--data", help="Prepared dataset folder (from `lorafleet prepare`)."),
    out: Path = typer.Option(..., "--out", help="Artifact folder to create (written atomically)."),
    config_file: Path | None = typer.Option(None, "--config", help="YAML file of train options (TrainConfig); flags override it."),
    model: str | None = _option("model", "--model"),
    epochs: int | None = _option("epochs", "--epochs"),
    max_steps: int | None = _option("max_steps", "--max-steps"),
    batch_size: int | None = _option("batch_size", "--batch-size"),
    grad_accum: int | None = _option("grad_accum", "--grad-accum"),
    lr: float | None = _option("lr", "--lr"),
    lora_r: int | None = _option("lora_r", "--lora-r"),
    lora_alpha: float | None = _option("lora_alpha", "--lora-alpha"),
    lora_dropout: float | None = _option("lora_dropout", "--lora-dropout"),
    target_modules: str | None = typer.Option(
        None, "--target-modules", help=field_help("target_modules") + " (comma-separated)."),
    rslora: bool | None = _option("rslora", "--rslora/--no-rslora"),
    dora: bool | None = _option("dora", "--dora/--no-dora"),
    quantization: str | None = _option("quantization", "--quantization"),
    precision: str | None = _option("precision", "--precision"),
    gradient_checkpointing: bool | None = _option(
        "gradient_checkpointing", "--gradient-checkpointing/--no-gradient-checkpointing"),
    packing: bool | None = _option("packing", "--packing/--no-packing"),
    max_memory_gb: float | None = _option("max_memory_gb", "--max-memory"),
    eval_every: int | None = _option("eval_every", "--eval-every"),
    early_stopping_patience: int | None = _option("early_stopping_patience", "--early-stopping-patience"),
    save_every: int | None = _option("save_every", "--save-every"),
    seed: int | None = _option("seed", "--seed"),
    tensorboard: bool | None = _option("tensorboard", "--tensorboard/--no-tensorboard"),
    resume: bool = typer.Option(False, "--resume", help=field_help("resume") + "."),
    force: bool = typer.Option(False, "--force", help=field_help("force") + " (and discard its checkpoints)."),
    settings: list[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE",
        help="Any other TrainConfig field, dotted for the speed-up section (value in YAML syntax), e.g. "
        "--set speedups.cuda_graphs=false; repeatable.",
    ),
) -> None:
    """Train a LoRA / QLoRA adapter on a prepared dataset and write a self-describing artifact.

    Runs unchanged under `torchrun --nproc_per_node N` (data parallel; --batch-size is per process).
    """
    options = dict(locals())  # every flag, before any other local name exists
    import os
    from lorafleet.config import ConfigError, load_train_config
    from lorafleet.data.dataset import DatasetError
    from lorafleet.train.checkpoint import CheckpointError
    from lorafleet.train.fast.plan import PlanError
    from lorafleet.train.preflight import PreflightError
    from lorafleet.train.save import OutputError
    from lorafleet.train.trainer import train_adapter

    overrides = {k: v for k, v in options.items() if k not in {"data", "out", "config_file", "settings"}}
    overrides |= {"resume": resume or None, "force": force or None}  # an absent flag leaves the YAML's value
    if target_modules is not None and target_modules != "all-linear":
        overrides["target_modules"] = [m.strip() for m in target_modules.split(",") if m.strip()]
    try:
        for setting in settings:
            _merge_setting(overrides, setting)
        config = load_train_config(config_file, overrides)
        manifest = train_adapter(data, out, config)
    except (ConfigError, PreflightError, PlanError, OutputError, DatasetError, ModelError, CheckpointError) as exc:
        fail(str(exc))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports
    m = manifest.metrics
    console.print(
        f"[bold green]trained[/] {escape(str(out))}: {m.steps} steps, train loss {m.train_loss:.4f}, "
        f"eval loss {m.eval_loss if m.eval_loss is None else round(m.eval_loss, 4)}, {m.tokens_per_s:,.0f} tokens/s",
        highlight=False,
    )


def _merge_setting(overrides: dict, setting: str) -> None:
    """Add one `--set a.b=value` to `overrides` (nested by the dots; the value parsed as YAML)."""
    import yaml

    from lorafleet.config import ConfigError

    key, sep, raw = setting.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {setting!r}: expected KEY=VALUE, e.g. speedups.cuda_graphs=false")
    *parents, leaf = key.strip().replace("-", "_").split(".")
    node = overrides
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {setting!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(raw)


def verify(artifact: Path = typer.Argument(..., help="Artifact folder (with lorafleet.json).")) -> None:
    """Re-check an artifact's files against its manifest; exit 1 when anything is wrong."""
    from lorafleet.artifact import verify_artifact

    problems = verify_artifact(artifact)
    if problems:
        for problem in problems:
            err_console.print(f"[bold red]problem:[/] {escape(problem)}", highlight=False)
        raise typer.Exit(1)
    console.print(f"[bold green]OK[/] {escape(str(artifact))}", highlight=False)
