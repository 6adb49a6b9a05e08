"""`lorafleet serve` and `lorafleet ab-report`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.markup import escape

from lorafleet.cli.common import JsonOption, console, err_console, fail


def register(app: typer.Typer) -> None:
    """Add `serve` and `ab-report` to the top-level app."""
    app.command("serve")(serve)
    app.command("ab-report")(ab_report)


def serve(
    config_file: Path | None = typer.Option(None, "--config", help="Fleet YAML (see configs/fleet.yaml); flags override it."),
    host: str | None = typer.Option(None, "--host", help="Address the gateway listens on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Gateway port (default 8080)."),
    replicas: int | None = typer.Option(None, "--replicas", help="vLLM replicas to start (default 1)."),
    engine_url: list[str] = typer.Option([], "--engine-url", help="Attach to this vLLM server instead of starting one (repeatable)."),
    engine_api_key: list[str] = typer.Option(
        [], "--engine-api-key", help="API key of the attached servers: one for all, or one per --engine-url in order."
    ),
    auth: str | None = typer.Option(
        None, "--auth", help="required | none | auto (default: required once `lorafleet keys create` made a key; none only for a loopback demo)."
    ),
    print_engine_command: bool = typer.Option(
        False, "--print-engine-command", help="Print the derived vLLM command of each replica and start nothing."
    ),
) -> None:
    """Start vLLM replicas with derived flags and the OpenAI-compatible gateway in front of them."""
    from lorafleet.serve.config import FleetConfigError, load_fleet_config
    from lorafleet.serve.flags import EnginePlanError
    from lorafleet.serve.launch import ServeError, build_gateway, engine_commands, plan_fleet, run

    try:
        engines = _engines(engine_url, engine_api_key)
        config = load_fleet_config(config_file, {"host": host, "port": port, "replicas": replicas, "engines": engines, "auth": auth})
        planned = plan_fleet(config)
    except (FleetConfigError, ServeError, EnginePlanError, ValueError) as exc:
        fail(str(exc))
    if print_engine_command:
        print("\n".join(engine_commands(planned)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine call would drown the gateway's own
    where = f"{len(config.engines)} attached engine(s)" if config.engines else f"{config.replicas} replica(s) (about a minute to start)"
    err_console.print(f"lorafleet gateway on http://{config.host}:{config.port} with {where}", highlight=False, markup=False)
    app, manager = build_gateway(config, planned)
    if config.auth == "none":
        err_console.print("[yellow]--auth none:[/] every request is served without an API key; use it only on loopback", highlight=False)
    run(app, config, manager)


def _engines(urls: list[str], keys: list[str]) -> list[dict] | None:
    if not urls:
        if keys:
            raise ValueError("--engine-api-key needs --engine-url")
        return None
    if len(keys) not in (0, 1, len(urls)):
        raise ValueError(f"give one --engine-api-key for all engines or one per --engine-url ({len(urls)}), not {len(keys)}")
    per_url = keys if len(keys) == len(urls) else (keys * len(urls) if keys else [None] * len(urls))
    return [{"url": url, "api_key": key} for url, key in zip(urls, per_url)]


def ab_report(
    log_file: Path = typer.Argument(..., help="A gateway request log (LORAFLEET_HOME/logs/requests.jsonl)."),
    alias: str = typer.Option(..., "--alias", help="The alias whose versions to compare."),
    as_json: bool = JsonOption,
) -> None:
    """Compare an alias's versions from the request log: traffic share, p50/p95 latency, errors, fallbacks, tokens."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from lorafleet.serve.abreport import summarize
    from lorafleet.serve.requestlog import read_records

    if not log_file.is_file():
        fail(f"{log_file} is not a file: pass the gateway's request log")
    records, problems = read_records(log_file)
    for problem in problems:
        err_console.print(f"[yellow]skipped[/] {escape(problem)}", highlight=False)
    stats = summarize(records, alias)
    if not stats:
        fail(f"no requests for alias {alias!r} in {log_file} ({len(records)} requests for other models)", code=1)
    if as_json:
        print(json.dumps({"alias": alias, "versions": [asdict(s) for s in stats], "skipped_lines": len(problems)}, indent=2))
        return
    table = Table(title=escape(f"alias {alias!r}: {sum(s.requests for s in stats)} requests"))
    for column in ("version", "requests", "share", "p50 latency", "p95 latency", "p50 TTFT", "errors", "fallbacks",
                   "prompt tok/req", "completion tok/req"):
        table.add_column(column, justify="left" if column == "version" else "right")
    for s in stats:
        table.add_row(s.version, str(s.requests), f"{s.share:.1%}", _ms(s.p50_latency_s), _ms(s.p95_latency_s), _ms(s.p50_ttft_s),
                      f"{s.error_rate:.1%}", f"{s.fallback_rate:.1%}", _num(s.mean_prompt_tokens), _num(s.mean_completion_tokens))
    # rich falls back to 80 columns when stdout is not a terminal, which would wrap every cell of this table
    (console if console.is_terminal else Console(width=160)).print(table)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
