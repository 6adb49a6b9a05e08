"""The demo's second half, against the running gateway: canary traffic, its A/B report, and the eval.

Canary traffic carries a `user` per simulated customer, so the gateway's sticky routing keeps each
customer on one version, as a real canary would; the A/B report then reads the requests the gateway
logged while the 90/10 split was live (the ones marked `canary`).
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lorafleet.eval.report import EvalReport
from lorafleet.eval.runner import EvalOptions, Target, evaluate
from lorafleet.serve.abreport import VersionStats, summarize
from lorafleet.serve.requestlog import read_records

CONCURRENCY = 8  # requests in flight at once, canary traffic and eval alike: vLLM batches them
EVAL_MAX_TOKENS = 96  # a triage answer is one JSON object of ~35 tokens (48 at most in the data): twice that cuts only prose


def canary_done(seen: Counter[str], sent: int, planned: int, cap: int, versions: list[str]) -> bool:
    """Stop sending canary traffic once `planned` requests went out and every version answered at
    least once, or at `cap` requests whatever happened (a canary at 10% may need a few more customers)."""
    return sent >= cap or (sent >= planned and all(seen[v] > 0 for v in versions))


def send_canary_traffic(url: str, alias: str, dev: Path, versions: list[str], planned: int, cap: int, console: Console,
                        concurrency: int = CONCURRENCY) -> Counter[str]:
    """Send dev tickets to `alias` as distinct customers, `concurrency` at a time, until canary_done; returns
    requests per serving version (the gateway's `x-lorafleet-adapter` header). Raises httpx.HTTPStatusError on a
    failed request."""
    tickets = [json.loads(line)["messages"] for line in dev.read_text(encoding="utf-8").splitlines() if line.strip()]
    seen: Counter[str] = Counter()
    sent = 0

    def send(customer: int) -> str:
        body = {"model": alias, "messages": tickets[customer % len(tickets)], "max_tokens": 48, "temperature": 0,
                "user": f"customer-{customer}"}
        response = client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        return response.headers.get("x-lorafleet-adapter", "?")

    limits = httpx.Limits(max_connections=concurrency)
    with httpx.Client(base_url=url, timeout=300, limits=limits) as client, ThreadPoolExecutor(concurrency) as pool, \
            _progress(console) as progress:
        task = progress.add_task(f"canary traffic to {alias!r}", total=planned)
        while not canary_done(seen, sent, planned, cap, versions):
            wave = range(sent, min(sent + concurrency, cap))  # one wave at a time, so the stop rule sees every answer
            seen.update(pool.map(send, wave))
            sent = wave.stop
            progress.update(task, completed=sent, total=max(planned, sent))
    return seen


def canary_report(request_log: Path, alias: str) -> list[VersionStats]:
    """`lorafleet ab-report` over the requests logged while `alias` was split between versions."""
    records, _ = read_records(request_log)
    return summarize([r for r in records if r.get("canary")], alias)


def ab_table(alias: str, stats: list[VersionStats]) -> Table:
    table = Table(title=f"ab-report: alias {alias!r} during the canary", title_justify="left")
    for column in ("version", "requests", "share", "p50 latency", "p95 latency", "errors", "fallbacks", "completion tok/req"):
        table.add_column(column, justify="left" if column == "version" else "right")
    for s in stats:
        table.add_row(
            s.version, str(s.requests), f"{s.share:.0%}", _ms(s.p50_latency_s), _ms(s.p95_latency_s),
            f"{s.error_rate:.0%}", f"{s.fallback_rate:.0%}", "-" if s.mean_completion_tokens is None else f"{s.mean_completion_tokens:.1f}",
        )
    return table


def write_ab_report(path: Path, alias: str, stats: list[VersionStats]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"alias": alias, "versions": [asdict(s) for s in stats]}, indent=2) + "\n", encoding="utf-8")


def run_eval(url: str, dev: Path, targets: list[Target], limit: int | None, console: Console) -> EvalReport:
    """`lorafleet eval` of `targets` on `dev` through the gateway, greedy, with a progress bar per model."""
    options = EvalOptions(endpoint=url, data=dev, targets=targets, limit=limit, concurrency=CONCURRENCY,
                          max_tokens=EVAL_MAX_TOKENS, timeout_s=600)
    with _progress(console) as progress:
        tasks: dict[str, int] = {}

        def on_progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"eval {name}", total=total)
            progress.update(tasks[name], completed=done)

        return evaluate(options, on_progress)


def examples_table(report: EvalReport, n: int = 3, longest: int = 240) -> Table:
    """The first `n` held-out tickets with each model's answer, cut at `longest` characters (the JSON report has them whole)."""
    table = Table(title=f"{n} held-out tickets, answered by each model", title_justify="left", show_lines=True)
    for column in ("expected", *(m.model for m in report.models)):
        table.add_column(column)
    for i in range(min(n, report.lines)):
        expected = ", ".join(f"{k}={v}" for k, v in report.models[0].cases[i].expected.items())
        answers = [_shorten(m.cases[i].answer or f"({m.cases[i].status})", longest) for m in report.models]
        table.add_row(escape(expected), *map(escape, answers))
    return table


def _shorten(text: str, longest: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= longest else text[: longest - 1] + "…"


def write_eval_report(path: Path, report: EvalReport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")


def usage_snippet(url: str, alias: str, ticket: str) -> str:
    """What to paste to talk to the fleet the demo left running."""
    body = json.dumps({"model": alias, "messages": [{"role": "user", "content": ticket}]}).replace("'", "'\\''")  # shell-quoted
    return (
        f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'\n\n"
        f"from openai import OpenAI\n"
        f'client = OpenAI(base_url="{url}/v1", api_key="unused")\n'
        f'answer = client.chat.completions.create(model="{alias}", messages=[{{"role": "user", "content": {ticket!r}}}])\n'
        f"print(answer.choices[0].message.content)"
    )


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"
