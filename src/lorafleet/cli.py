"""The `lorafleet` command line: each command parses its options, calls one library function, prints."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from lorafleet.models import EMBEDDED_DEFAULT, ModelError

app = typer.Typer(
    help="Turn chat data into LoRA / QLoRA adapters and serve a fleet of them on one base model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Inspect base models.", no_args_is_help=True)
app.add_typer(model_app, name="model")

console = Console()
err_console = Console(stderr=True)

ModelOption = typer.Option(
    EMBEDDED_DEFAULT, "--model", help=f"Base model: the embedded default {EMBEDDED_DEFAULT!r} or a local Hugging Face folder."
)


def fail(message: str, code: int = 2) -> None:
    """Print `message` as an error and exit with `code`."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@model_app.command("info")
def model_info(model: str = ModelOption, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Resolve a base model (converting the embedded default on first use) and print its fingerprints."""
    from lorafleet.models import model_fingerprint, resolve_model, tokenizer_fingerprint

    try:
        ref = resolve_model(model)
    except ModelError as exc:
        fail(str(exc))
    info = {
        "name": ref.name,
        "path": str(ref.path),
        "model_fingerprint": model_fingerprint(ref.path),
        "tokenizer_fingerprint": tokenizer_fingerprint(ref.path),
    }
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            console.print(f"[bold]{key}[/]: {value}", highlight=False)


# ---- prepare -------------------------------------------------------------------------------------


@app.command("prepare")
def prepare(
    inputs: list[Path] = typer.Argument(..., help="Chat JSONL files (.jsonl or .jsonl.gz), any of the four formats."),
    out: Path = typer.Option(..., "--out", help="Folder to write the prepared dataset into."),
    model: str = ModelOption,
    max_seq_length: int = typer.Option(2048, "--max-seq-length", help="Longest sample in tokens, template included."),
    max_error_rate: float = typer.Option(0.05, "--max-error-rate", help="Fail when rejected/lines exceeds this fraction."),
    eval_fraction: float = typer.Option(0.05, "--eval-fraction", help="Fraction of samples held out for evaluation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/eval split."),
    on_overflow: str = typer.Option("truncate", "--on-overflow", help="Over-long samples: truncate (remove whole earlier turns) or drop."),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0: automatic, several only for large inputs on 4+ CPUs)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout (summary goes to stderr)."),
) -> None:
    """Validate chat JSONL, apply the model's chat template, mask non-assistant tokens, split, and write a dataset."""
    from pydantic import ValidationError
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from lorafleet.data.prepare import ErrorRateExceeded, PrepareError, PrepareOptions, prepare_dataset
    from lorafleet.data.summary import print_summary
    from lorafleet.data.writer import OutputError

    try:
        options = PrepareOptions(
            model=model, max_seq_length=max_seq_length, max_error_rate=max_error_rate,
            eval_fraction=eval_fraction, seed=seed, on_overflow=on_overflow, workers=workers,
        )
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        fail(f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}")
    summary_console = err_console if as_json else console
    columns = (SpinnerColumn(), TextColumn("preparing: {task.fields[lines]:,} lines read"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err_console, transient=True) as progress:
            task = progress.add_task("prepare", lines=0)
            report = prepare_dataset(inputs, out, options, on_progress=lambda n: progress.update(task, lines=n))
    except ErrorRateExceeded as exc:
        print_summary(exc.report, err_console)
        fail(str(exc), code=1)
    except (PrepareError, OutputError, ModelError, OSError) as exc:
        fail(str(exc))
    print_summary(report, summary_console)
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        console.print(f"wrote {out} (train {report.train:,}, eval {report.eval:,})", highlight=False)


# ---- train / verify ------------------------------------------------------------------------------


@app.command("train")
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


@app.command("verify")
def verify(artifact: Path = typer.Argument(..., help="Artifact folder (with lorafleet.json).")) -> None:
    """Re-check an artifact's files against its manifest; exit 1 when anything is wrong."""
    from lorafleet.train.artifact import verify_artifact

    problems = verify_artifact(artifact)
    if problems:
        for problem in problems:
            err_console.print(f"[bold red]problem:[/] {problem}", highlight=False)
        raise typer.Exit(1)
    console.print(f"[bold green]OK[/] {artifact}", highlight=False)


# ---- adapters (registry) -------------------------------------------------------------------------

adapters_app = typer.Typer(help="The adapter registry: push versions, route aliases, promote and roll back.", no_args_is_help=True)
alias_app = typer.Typer(help="Route an alias (the public model name) to adapter versions.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")
adapters_app.add_typer(alias_app, name="alias")
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


def _registry(call, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run one registry function; its RegistryError (or an unreachable database) becomes `fail`."""
    from sqlalchemy.exc import OperationalError

    from lorafleet.registry.errors import RegistryError

    try:
        return call(*args, **kwargs)
    except RegistryError as exc:
        fail(str(exc))
    except OperationalError as exc:
        fail(f"cannot use the registry database (LORAFLEET_REGISTRY_URL / LORAFLEET_HOME): {exc.orig}")


def _print_json(value: object) -> None:
    from lorafleet.registry.service import to_jsonable

    print(json.dumps(to_jsonable(value), indent=2))


def _print_revision(rev) -> None:  # type: ignore[no-untyped-def]
    from lorafleet.registry.aliases import describe_routing

    console.print(f"{rev.alias} revision {rev.revision} ({rev.action}): {describe_routing(rev.routes)}", highlight=False)


@adapters_app.command("init")
def adapters_init(model: str = ModelOption, as_json: bool = JsonOption) -> None:
    """Pin the registry's base model (one registry serves one base model)."""
    from lorafleet.registry.push import init_base

    base = _registry(init_base, model)
    if as_json:
        _print_json(base)
    else:
        console.print(f"registry base model: {base.name} ({base.model_fingerprint[:12]}…)", highlight=False)


@adapters_app.command("push")
def adapters_push(
    artifact_dir: Path = typer.Argument(..., help="An artifact folder written by `lorafleet train`."),
    name: str = typer.Option(..., "--name", help="Adapter name: [a-z0-9][a-z0-9._-]{0,62}."),
    as_json: bool = JsonOption,
) -> None:
    """Check an artifact and store it as the next immutable version NAME@vN."""
    from lorafleet.registry.push import push

    result = _registry(push, artifact_dir, name)
    if as_json:
        _print_json({"ref": result.ref, "version": result.version, "content_path": result.content_path,
                     "content_reused": result.content_reused})
    else:
        print(result.ref)


@adapters_app.command("list")
def adapters_list(as_json: bool = JsonOption) -> None:
    """Every version with its creation time and the aliases that route to it."""
    from rich.table import Table

    from lorafleet.registry.service import list_adapters

    rows = _registry(list_adapters)
    if as_json:
        _print_json(rows)
        return
    table = Table("version", "created", "content", "pushed by", "aliases")
    for row in rows:
        table.add_row(row.ref, f"{row.created_at:%Y-%m-%d %H:%M:%S}", row.content_sha256[:12], row.pushed_by or "", " ".join(row.aliases))
    console.print(table)


@adapters_app.command("show")
def adapters_show(ref: str = typer.Argument(..., help="NAME@vN, or NAME for its latest version."), as_json: bool = JsonOption) -> None:
    """A version's manifest, metrics, checksums and the aliases pointing at it."""
    from rich.table import Table

    from lorafleet.registry.service import show

    detail = _registry(show, ref)
    if as_json:
        _print_json(detail)
        return
    s, m = detail.summary, detail.manifest
    console.print(f"[bold]{s.ref}[/] pushed {s.created_at:%Y-%m-%d %H:%M:%S} by {s.pushed_by or '?'}; aliases: {' '.join(s.aliases) or 'none'}", highlight=False)
    console.print(f"base {m.get('base_model')}; lora {json.dumps(m.get('lora'))}; max_seq_length {m.get('max_seq_length')}", highlight=False)
    console.print(f"metrics {json.dumps(m.get('metrics'))} ({len(detail.metrics)} lines in metrics.jsonl)", highlight=False)
    table = Table("file", "sha256")
    for path, digest in sorted(detail.checksums.items()):
        table.add_row(path, digest)
    console.print(table)


@adapters_app.command("rm")
def adapters_rm(ref: str = typer.Argument(..., help="NAME@vN"), as_json: bool = JsonOption) -> None:
    """Remove a version (refused while an alias routes to it); `gc` frees its files."""
    from lorafleet.registry.service import remove

    removed = _registry(remove, ref)
    _print_json(removed) if as_json else print(f"removed {removed.ref}")


@alias_app.command("set")
def alias_set(
    alias: str = typer.Argument(..., help="The alias: the model name clients ask for."),
    targets: list[str] = typer.Argument(..., help="NAME@vN[=WEIGHT] ...; weights are integers summing to 100."),
    fallback_prompt: str | None = typer.Option(None, "--fallback-prompt", help="System prompt used when the gateway answers from the base model."),
    as_json: bool = JsonOption,
) -> None:
    """Route ALIAS to one or more versions (a canary: support@v1=90 support@v2=10)."""
    from lorafleet.registry.service import set_alias

    rev = _registry(set_alias, alias, targets, fallback_prompt)
    _print_json(rev) if as_json else _print_revision(rev)


@adapters_app.command("promote")
def adapters_promote(alias: str, ref: str = typer.Argument(..., help="NAME@vN"), as_json: bool = JsonOption) -> None:
    """Send 100% of ALIAS's traffic to NAME@vN."""
    from lorafleet.registry.service import promote

    rev = _registry(promote, alias, ref)
    _print_json(rev) if as_json else _print_revision(rev)


@adapters_app.command("rollback")
def adapters_rollback(alias: str, as_json: bool = JsonOption) -> None:
    """Restore ALIAS's previous routing; repeating goes further back."""
    from lorafleet.registry.service import rollback

    rev = _registry(rollback, alias)
    _print_json(rev) if as_json else _print_revision(rev)


@adapters_app.command("history")
def adapters_history(alias: str, as_json: bool = JsonOption) -> None:
    """Every routing change of ALIAS, with its time."""
    from rich.table import Table

    from lorafleet.registry.aliases import describe_routing
    from lorafleet.registry.service import history

    revisions = _registry(history, alias)
    if as_json:
        _print_json(revisions)
        return
    table = Table("revision", "time", "action", "routing", "fallback prompt")
    for rev in revisions:
        table.add_row(str(rev.revision), f"{rev.created_at:%Y-%m-%d %H:%M:%S}", rev.action, describe_routing(rev.routes), rev.fallback_prompt or "")
    console.print(table)


@adapters_app.command("gc")
def adapters_gc(as_json: bool = JsonOption) -> None:
    """Remove stored content that no version references."""
    from lorafleet.registry.service import gc

    report = _registry(gc)
    if as_json:
        _print_json(report)
    else:
        print(f"removed {len(report.removed)} unreferenced content folder(s), kept {report.kept}")


# ---- demo ----------------------------------------------------------------------------------------


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for everything the demo writes (replaced), its registry included."),
    config: Path = typer.Option(Path("configs/demo.yaml"), "--config", help="Train config for the demo's two adapters."),
) -> None:
    """Run the whole lifecycle on the embedded model: prepare → train two versions → verify → push → canary → promote → rollback."""
    from lorafleet.demo.quickstart import run_demo

    if not config.is_file():
        fail(f"demo config {config} not found; run the demo from the repository root (`make demo`) or pass --config")
    run_demo(out, config, console)


if __name__ == "__main__":
    app()
