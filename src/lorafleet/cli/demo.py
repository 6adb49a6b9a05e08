"""`lorafleet demo`: what `make demo` runs."""

from __future__ import annotations

from pathlib import Path

import typer

from lorafleet.cli.common import console, fail


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for everything the demo writes, its registry included."),
    recipe: Path = typer.Option(Path("configs/triage.yaml"), "--config", help="Train config of v2, the adapter promoted and evaluated."),
    first_version: Path = typer.Option(Path("configs/demo.yaml"), "--first-config", help="Train config of v1, the quick first version."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over instead of reusing the data, dataset and adapters in --out."),
    keep_serving: bool = typer.Option(False, "--keep-serving", help="Leave the gateway and replicas up at the end (Ctrl-C stops them)."),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="Gateway port (0 = any free port)."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="vLLM replicas to start."),
    dev: int = typer.Option(200, "--dev", min=1, help="Held-out tickets to generate and evaluate on."),
) -> None:
    """Raw tickets → prepare → train → push, 90/10 canary, promote → serve → eval base vs adapter → ab-report → stop."""
    from lorafleet.demo.fleet import FleetNotReady
    from lorafleet.demo.quickstart import DemoOptions, run_demo
    from lorafleet.serve.launch import ServeError

    for path, flag in ((recipe, "--config"), (first_version, "--first-config")):
        if not path.is_file():
            fail(f"demo config {path} ({flag}) not found; run the demo from the repository root (`make demo`) or pass {flag}")
    options = DemoOptions(out=out, recipe=recipe, first_version=first_version, fresh=fresh, keep_serving=keep_serving,
                          port=port, replicas=replicas, dev_tickets=dev)
    try:
        run_demo(options, console)
    except (ValueError, ServeError, FleetNotReady, TimeoutError) as exc:  # config, data, plan and start-up errors say what and where
        fail(f"demo stopped: {exc}")
