"""`lorafleet eval`: score a served model (or two, side by side) on a JSONL file of conversations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lorafleet.cli.common import console, err_console, fail

if TYPE_CHECKING:
    from lorafleet.eval.report import EvalReport


def _prompt_text(value: str | None, flag: str) -> str | None:
    """A system prompt given as text, or as @FILE to read it from a file (as curl does)."""
    if value is None or not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8").strip()
    except OSError as exc:
        fail(f"{flag}: cannot read {value[1:]}: {exc.strerror or exc}")


def eval_command(
    endpoint: str = typer.Option(..., "--endpoint", help="OpenAI-compatible server: http://host:port or its /v1 base URL."),
    model: str = typer.Option(..., "--model", help="Model to evaluate: an alias, an adapter or the base model."),
    data: Path = typer.Option(..., "--data", help="JSONL file: {messages, expected, required} per line."),
    system_prompt: str | None = typer.Option(
        None, "--system-prompt", help="System message for --model (replaces the data's own); @FILE reads it from a file."
    ),
    compare: str | None = typer.Option(None, "--compare", help="A second model, evaluated after the first, side by side."),
    compare_system_prompt: str | None = typer.Option(
        None, "--compare-system-prompt", help="System message for --compare (default: the data's own); @FILE reads a file."
    ),
    prompt_in: str = typer.Option(
        "system", "--prompt-in",
        help="Where the prompts go: system (the system message) or user (in front of the first user message).",
    ),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Requests in flight at once."),
    max_tokens: int = typer.Option(160, "--max-tokens", min=1, help="Longest answer per request."),
    timeout: float = typer.Option(120.0, "--timeout", min=0.001, help="Seconds per request before it counts as a timeout failure."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N conversations."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="LORAFLEET_API_KEY", help="Bearer token for the endpoint."),
    examples: int = typer.Option(0, "--examples", min=0, help="Also print the first N answers of each model."),
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON report to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout instead of tables."),
    record: bool = typer.Option(
        False, "--record",
        help="Store the scores in the registry against each adapter version that answered (named by the lorafleet gateway's "
             "x-lorafleet-adapter header); shown by `adapters show` and the console.",
    ),
) -> None:
    """Send each conversation greedily, score the answers against `expected`, print JSON-valid rate, accuracy, latency.

    Exit status 0 when every request got an answer, 1 when some failed (they are scored as wrong, never dropped)
    or when --record found no adapter version to record against.
    """
    from pydantic import ValidationError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lorafleet.eval.cases import EvalDataError
    from lorafleet.eval.render import print_report
    from lorafleet.eval.runner import EvalOptions, Target, evaluate

    if prompt_in not in ("system", "user"):
        fail(f"--prompt-in must be system or user, not {prompt_in!r}")
    targets = [Target(model=model, system_prompt=_prompt_text(system_prompt, "--system-prompt"), prompt_in=prompt_in)]
    if compare is not None:
        prompt = _prompt_text(compare_system_prompt, "--compare-system-prompt")
        targets.append(Target(model=compare, system_prompt=prompt, prompt_in=prompt_in))
    try:
        options = EvalOptions(
            endpoint=endpoint, data=data, targets=targets, api_key=api_key, max_tokens=max_tokens,
            timeout_s=timeout, concurrency=concurrency, limit=limit,
        )
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        fail(f"{'.'.join(map(str, error['loc']))}: {error['msg']}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err_console, transient=True) as progress:
            tasks: dict[str, int] = {}

            def on_progress(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = progress.add_task(f"eval {name}", total=total)
                progress.update(tasks[name], completed=done)

            report = evaluate(options, on_progress)
    except EvalDataError as exc:
        fail(str(exc))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        print_report(report, console, examples)
    if record:
        _record(report, data)
    if any(m.failed for m in report.models):
        err_console.print("[yellow]some requests failed; they are scored as wrong answers (see the report)[/]")
        raise typer.Exit(1)


def _record(report: EvalReport, data: Path) -> None:
    from lorafleet.eval.recording import record_report
    from lorafleet.registry.errors import RegistryError

    try:
        recorded = record_report(report, data)
    except RegistryError as exc:
        fail(f"--record: {exc}", 1)
    if not recorded:
        fail("--record: no answer named an adapter version (the x-lorafleet-adapter header), so nothing was recorded; "
             "evaluate an alias or NAME@vN through the lorafleet gateway", 1)
    refs = ", ".join(f"{r.ref} ({r.cases}/{r.run_cases} answers via {r.model})" for r in recorded)
    err_console.print(f"recorded eval for {refs}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add `eval` to the top-level app."""
    app.command("eval")(eval_command)
