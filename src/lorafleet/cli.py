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


# ---- train / verify ------------------------------------------------------------------------------


# ---- adapters (registry) -------------------------------------------------------------------------


# ---- demo ----------------------------------------------------------------------------------------
