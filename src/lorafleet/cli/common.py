"""Shared pieces of the command line: the consoles, the --model option and `fail`."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from lorafleet.models import EMBEDDED_DEFAULT

console = Console()
err_console = Console(stderr=True)

ModelOption = typer.Option(
    EMBEDDED_DEFAULT, "--model", help=f"Base model: the embedded default {EMBEDDED_DEFAULT!r} or a local Hugging Face folder."
)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


def fail(message: str, code: int = 2) -> None:
    """Print `message` as an error and exit with `code`. The message is text, never markup: it often quotes what the
    user typed (a path, a name), and rich would drop `[tag]` from it or fail on `[/tag]`."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)
