"""Eval reports for people: a side-by-side summary, a confusion table per categorical field, failures, examples."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table

from lorafleet.eval.report import INVALID, MISSING, OTHER, Confusion, EvalReport, ModelReport

MAX_FAILURES_SHOWN = 5


def _pct(count: int, total: int) -> str:
    return f"{count / total:.1%} ({count}/{total})" if total else "-"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def summary_table(report: EvalReport) -> Table:
    """One row per metric, one column per model."""
    table = Table(title=escape(f"eval: {report.data} ({report.lines} conversations) at {report.endpoint}"), title_justify="left")
    table.add_column("metric", style="bold")
    for m in report.models:
        table.add_column(escape(m.model + (f" + prompt in {m.prompt_in} turn" if m.system_prompt else "")), justify="right")
    fields = sorted({f.field for m in report.models for f in m.fields})
    rows: list[tuple[str, list[str]]] = [
        ("requests", [str(m.requests) for m in report.models]),
        ("failed requests", [_failures(m) for m in report.models]),
        ("JSON valid", [_pct(m.json_valid, m.scored) for m in report.models]),
        ("all fields present", [_pct(m.schema_valid, m.scored) for m in report.models]),
        *[(f"{name} accuracy", [_field(m, name) for m in report.models]) for name in fields],
        ("exact match", [_pct(m.exact, m.scored) for m in report.models]),
        ("latency p50", [_seconds(m.latency.p50) for m in report.models]),
        ("latency p95", [_seconds(m.latency.p95) for m in report.models]),
        ("completion tokens/s", [f"{m.completion_tokens / m.wall_s:.1f}" if m.wall_s else "-" for m in report.models]),
    ]
    for label, values in rows:
        table.add_row(label, *values)
    return table


def _failures(m: ModelReport) -> str:
    if not m.failed:
        return "0"
    return f"{m.failed} (" + ", ".join(f"{k} {v}" for k, v in m.failures.items()) + ")"


def _field(m: ModelReport, name: str) -> str:
    f = next((f for f in m.fields if f.field == name), None)
    return "-" if f is None else _pct(f.correct, f.total)


def confusion_table(model: str, confusion: Confusion) -> Table:
    """Expected labels down, predicted labels across, with the special columns only when they occur."""
    seen = {p for row in confusion.counts.values() for p in row}
    columns = confusion.labels + [c for c in (OTHER, MISSING, INVALID) if c in seen]
    table = Table(title=escape(f"{model}: {confusion.field}"), title_justify="left")
    table.add_column("expected ↓ predicted →", style="bold")
    for column in columns:
        table.add_column(escape(column), justify="right")
    for label in confusion.labels:
        row = confusion.counts.get(label, {})
        table.add_row(escape(label), *[_cell(row.get(c, 0), c == label) for c in columns])
    return table


def _cell(count: int, diagonal: bool) -> str:
    if not count:
        return "·"
    return f"[green]{count}[/]" if diagonal else f"[red]{count}[/]"


def failures_table(m: ModelReport) -> Table | None:
    failed = [c for c in m.cases if c.status != "ok"]
    if not failed:
        return None
    table = Table(title=escape(f"{m.model}: {len(failed)} failed request(s), first {min(len(failed), MAX_FAILURES_SHOWN)}"),
                  title_justify="left")
    for column in ("line", "status", "error"):
        table.add_column(column)
    for c in failed[:MAX_FAILURES_SHOWN]:
        table.add_row(str(c.line), c.status, escape(c.error or ""))
    return table


def examples_table(report: EvalReport, n: int) -> Table:
    """The answers of every model to the first `n` conversations, side by side."""
    table = Table(title=f"first {n} answers", title_justify="left", show_lines=True)
    table.add_column("line")
    table.add_column("expected")
    for m in report.models:
        table.add_column(escape(m.model))
    for i in range(min(n, report.lines)):
        first = report.models[0].cases[i]
        expected = ", ".join(f"{k}={v}" for k, v in first.expected.items())
        table.add_row(str(first.line), escape(expected), *[escape(m.cases[i].answer or f"({m.cases[i].status})") for m in report.models])
    return table


def render_report(report: EvalReport, examples: int = 0) -> RenderableType:
    parts: list[RenderableType] = [summary_table(report)]
    for m in report.models:
        parts += [confusion_table(m.model, c) for c in m.confusion]
        if (failed := failures_table(m)) is not None:
            parts.append(failed)
    if examples:
        parts.append(examples_table(report, examples))
    return Group(*parts)


def print_report(report: EvalReport, console: Console, examples: int = 0) -> None:
    console.print(render_report(report, examples), highlight=False)
