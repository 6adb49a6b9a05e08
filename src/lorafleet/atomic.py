"""Atomic publication: a folder or file written elsewhere appears at its final path complete, or not at all."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_dir(staging: Path, out: Path) -> None:
    """Rename the finished folder `staging` to `out`, replacing whatever `out` held.

    `out` is never half-written: readers see the old folder or the new one. The old one is renamed
    aside first (same file system) and deleted after the swap.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
