"""Content-addressed artifact store: `LORAFLEET_HOME/store/<sha256>/`, written once, read by everyone.

The address is the sha256 over the artifact's file list with each file's sha256, the manifest
included, so identical artifacts share one folder. A push stages the artifact in
`store/.staging/` (intake.py), checks that copy, and renames it into place (atomic), sealed
read-only (files 0444, folders 0555), then commits its database row. Content without a row (a
push that died between the two) is an orphan: the next push of the same content reuses it, `gc`
removes it. Pushes hold a shared lock on the store from staging to commit; `gc` holds it
exclusively, so it never deletes content or a staging folder that a running push is using.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lorafleet.paths import home_dir
from lorafleet.registry.intake import remove_tree

STAGING = ".staging"


@dataclass(frozen=True)
class GcReport:
    """What `gc` removed: orphan content digests and leftover staging folders."""

    removed: list[str]
    staging_removed: int
    kept: int


def store_dir() -> Path:
    return home_dir() / "store"


def staging_dir() -> Path:
    return store_dir() / STAGING


def content_digest(checksums: dict[str, str]) -> str:
    """sha256 over the sorted (path, sha256) pairs of every file, `lorafleet.json` included."""
    canonical = json.dumps(sorted(checksums.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def content_path(digest: str) -> Path:
    return store_dir() / digest


@contextmanager
def store_lock(exclusive: bool) -> Iterator[None]:
    """flock on `store/.lock`: shared for pushes, exclusive for gc. The kernel drops it if the process dies."""
    root = store_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def commit(staged: Path, checksums: dict[str, str], digest: str) -> tuple[Path, bool]:
    """Make `store/<digest>/` hold the checked, staged folder; returns (path, True when identical content was there).

    `staged` must hold exactly the files in `checksums` (path → sha256), read-only; it is renamed
    into place, never copied. An existing folder is reused only if it still holds exactly those
    bytes as regular files; a damaged one is replaced.
    """
    dest = content_path(digest)
    if dest.is_dir() and _holds_exactly(dest, checksums):
        return dest, True
    if dest.exists() or dest.is_symlink():  # damaged content from before: move it aside, then replace
        trash = staging_dir() / f"damaged.{uuid.uuid4().hex[:8]}"
        if dest.is_dir() and not dest.is_symlink():
            os.chmod(dest, 0o700)  # moving a folder to another parent rewrites its '..' entry
        os.rename(dest, trash)
        remove_tree(trash)
    try:
        os.rename(staged, dest)  # atomic: the folder appears complete or not at all
    except OSError:
        if dest.is_dir() and _holds_exactly(dest, checksums):  # lost a race to an identical push
            return dest, True
        raise
    for folder, _dirs, _files in os.walk(dest, topdown=False):
        os.chmod(folder, 0o555)
    return dest, False


def _holds_exactly(folder: Path, checksums: dict[str, str]) -> bool:
    """True when `folder` holds regular files with exactly these paths and sha256s, and nothing else."""
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                return False
        for name in files:
            path = Path(root) / name
            found[path.relative_to(folder).as_posix()] = _sha256_no_follow(path)
    return found == checksums


def _sha256_no_follow(path: Path) -> str:
    digest = hashlib.sha256()
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def gc(referenced: set[str], staging_grace_s: float = 0.0) -> GcReport:
    """Remove every content folder whose digest is not in `referenced`, and staging leftovers.

    Call with the store lock held exclusively, and `referenced` read after taking it.
    """
    root = store_dir()
    removed: list[str] = []
    kept = 0
    staging_removed = 0
    if not root.is_dir():
        return GcReport(removed, staging_removed, kept)
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.name in referenced:
            kept += 1
        else:
            remove_tree(entry)
            removed.append(entry.name)
    staging = root / STAGING
    if staging.is_dir():
        for entry in staging.iterdir():
            if time.time() - entry.lstat().st_mtime >= staging_grace_s:
                remove_tree(entry)
                staging_removed += 1
    return GcReport(removed, staging_removed, kept)
