"""The demo's bookkeeping: each step announced and timed, and the keys that decide what a second run reuses.

A step is reused when the key of its inputs equals the key written next to its output by the run
that made it; the keys are pure functions of the inputs, so the decision is too.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table


@dataclass
class StepTime:
    """One step of the demo as it ran."""

    title: str
    seconds: float = 0.0
    reused: bool = False


@dataclass
class StepLog:
    """Announces steps on the console and keeps how long each took, for the closing table."""

    console: Console
    total: int
    steps: list[StepTime] = field(default_factory=list)

    @contextmanager
    def step(self, title: str, what: str) -> Iterator[StepTime]:
        """Print `n/total title` and what the step does; on exit print and keep its duration.

        The caller marks the yielded StepTime `reused` when it found the step's output already made.
        """
        record = StepTime(title)
        self.steps.append(record)
        self.console.rule(f"{len(self.steps)}/{self.total} {title}")
        self.console.print(what, highlight=False, style="dim")
        started = time.monotonic()
        try:
            yield record
        finally:
            record.seconds = time.monotonic() - started
            note = " (reused from an earlier run)" if record.reused else ""
            self.console.print(f"{title}: {record.seconds:.1f} s{note}", highlight=False)

    def table(self) -> Table:
        table = Table(title="demo steps", title_justify="left")
        for column in ("step", "seconds", ""):
            table.add_column(column, justify="right" if column == "seconds" else "left")
        for s in self.steps:
            table.add_row(s.title, f"{s.seconds:.1f}", "reused" if s.reused else "")
        table.add_row("total", f"{sum(s.seconds for s in self.steps):.1f}", "")
        return table


def files_key(paths: list[Path], settings: dict) -> str:
    """sha256 over the bytes of `paths` (in the given order, names included) and `settings` as sorted JSON."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def text_key(*parts: str) -> str:
    """sha256 over `parts`, separated so that ("ab", "c") and ("a", "bc") differ."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def can_reuse(stamp: Path, key: str, output_ok: bool) -> bool:
    """Reuse a step's output when it is intact and the stamp beside it holds the same input key."""
    return output_ok and stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == key


def write_stamp(stamp: Path, key: str) -> None:
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n", encoding="utf-8")
