"""The human summary of a prepare run: a table of counts and a token-length histogram drawn in text."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from lorafleet.data.dataset import PrepareReport

_BAR_WIDTH = 40


def render_summary(report: PrepareReport) -> Group:
    """A rich renderable: counts, rejections by reason, token statistics, and the length histogram."""
    counts = Table(title="prepare", show_header=False, title_justify="left")
    counts.add_column("what", style="bold")
    counts.add_column("value", justify="right")
    counts.add_row("lines read", f"{report.lines:,}")
    counts.add_row("accepted", f"{report.accepted:,}")
    for fmt, n in report.formats.items():
        counts.add_row(f"  format {fmt}", f"{n:,}")
    counts.add_row("  truncated", f"{report.truncated:,}")
    counts.add_row("duplicates (kept once)", f"{report.duplicates:,}")
    counts.add_row("rejected", f"{report.rejected:,} ({report.error_rate:.1%})")
    for reason, n in report.rejections_by_reason.items():
        counts.add_row(f"  {reason}", f"{n:,}")
    counts.add_row("train / eval", f"{report.train:,} / {report.eval:,}")
    t = report.tokens
    counts.add_row("tokens total / trained", f"{t.total:,} / {t.trained:,}")
    counts.add_row("tokens per sample p50 / p95 / max", f"{t.p50:,.0f} / {t.p95:,.0f} / {t.max:,} (limit {report.max_seq_length:,})")
    return Group(counts, histogram_text(report.length_histogram))


def histogram_text(histogram: list[tuple[int, int]]) -> Text:
    """One line per bucket: its token range, a bar scaled to the largest bucket, and its count."""
    text = Text("tokens per sample\n", style="bold")
    if not histogram:
        return text.append("  (no samples)\n")
    peak = max(count for _, count in histogram) or 1
    lower = 1
    label_width = len(f"{histogram[-1][0]:,}") * 2 + 1
    for upper, count in histogram:
        bar = "█" * round(_BAR_WIDTH * count / peak)
        text.append(f"  {f'{lower:,}-{upper:,}':>{label_width}} ").append(f"{bar:<{_BAR_WIDTH}}", style="cyan")
        text.append(f" {count:,}\n")
        lower = upper + 1
    return text


def print_summary(report: PrepareReport, console: Console) -> None:
    console.print(render_summary(report), highlight=False)
