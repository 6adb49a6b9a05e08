"""`lorafleet model info` and `lorafleet prepare`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lorafleet.cli.common import ModelOption, console, err_console, fail
from lorafleet.models import ModelError

model_app = typer.Typer(help="Inspect base models.", no_args_is_help=True)


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


def register(app: typer.Typer) -> None:
    """Add `prepare` to the top-level app."""
    app.command("prepare")(prepare)



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
