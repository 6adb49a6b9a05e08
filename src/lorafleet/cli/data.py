"""`lorafleet model info` and `lorafleet prepare`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.markup import escape

from lorafleet.cli.common import ModelOption, console, err_console, fail
from lorafleet.models import ModelError

model_app = typer.Typer(help="Inspect base models.", no_args_is_help=True)


@model_app.command("info")
def model_info(model: str = ModelOption, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Resolve a base model (converting the embedded default on first use) and print its fingerprints.

    The model fingerprint covers the config, every tensor's bytes and the tokenizer; the first run on a
    model reads all its weights once (with a progress bar), later runs come from the cache.
    """
    from lorafleet.fingerprints import SCHEME, base_fingerprints
    from lorafleet.models import resolve_model

    try:
        ref = resolve_model(model)
        with fingerprint_progress(ref.name) as on_progress:
            fingerprints = base_fingerprints(ref.path, on_progress=on_progress)
    except ModelError as exc:
        fail(str(exc))
    info = {
        "name": ref.name,
        "path": str(ref.path),
        "model_fingerprint": fingerprints.model,
        "fingerprint_scheme": SCHEME,
        "tokenizer_fingerprint": fingerprints.tokenizer,
        "legacy_model_fingerprint": fingerprints.legacy_model,  # scheme 1, found in format-1 manifests
    }
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            console.print(f"[bold]{key}[/]: {escape(str(value))}", highlight=False, soft_wrap=True)


@contextmanager
def fingerprint_progress(name: str) -> Iterator[Callable[[int, int], None]]:
    """A callback for base_fingerprints that shows a progress bar on stderr once hashing starts (nothing when cached)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(f"fingerprinting {name}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                        console=err_console, transient=True)
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            progress.start()
            task = progress.add_task("hash", total=total)
        progress.update(task, completed=done)

    try:
        yield update
    finally:
        progress.stop()


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

    from lorafleet.data.formats import UnreadableInput
    from lorafleet.data.prepare import PrepareError, PrepareOptions, PrepareRefused, prepare_dataset
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
    except PrepareRefused as exc:
        print_summary(exc.report, err_console)
        fail(str(exc), code=1)
    except (PrepareError, UnreadableInput, OutputError, ModelError, OSError) as exc:
        fail(str(exc))
    print_summary(report, summary_console)
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        console.print(f"wrote {out} (train {report.train:,}, eval {report.eval:,})", highlight=False, markup=False)
