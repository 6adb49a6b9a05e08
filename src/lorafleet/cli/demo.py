"""`lorafleet demo`: what `make demo` runs."""

from __future__ import annotations

from pathlib import Path

import typer

from lorafleet.cli.common import console, fail


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for everything the demo writes (replaced), its registry included."),
    config: Path = typer.Option(Path("configs/demo.yaml"), "--config", help="Train config for the demo's two adapters."),
) -> None:
    """Run the whole lifecycle on the embedded model: prepare → train two versions → verify → push → canary → promote → rollback."""
    from lorafleet.demo.quickstart import run_demo

    if not config.is_file():
        fail(f"demo config {config} not found; run the demo from the repository root (`make demo`) or pass --config")
    run_demo(out, config, console)
