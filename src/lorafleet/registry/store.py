"""Content-addressed artifact store: `LORAFLEET_HOME/store/<sha256>/`, written once, read by everyone.

The address is the sha256 over the artifact's file list with each file's sha256, the manifest
included, so identical artifacts share one folder. A push copies into `store/.staging/` and renames
the complete folder into place (atomic), then commits its database row. Content without a row (a
push that died between the two) is an orphan: the next push of the same content reuses it, `gc`
removes it. Pushes hold a shared lock on the store while copying and committing; `gc` holds it
exclusively, so it never deletes content a running push is about to reference.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lorafleet.paths import home_dir
from lorafleet.registry.errors import ArtifactRejected
from lorafleet.artifact import MANIFEST_NAME, Manifest, sha256_file

STAGING = ".staging"


@dataclass(frozen=True)
class GcReport:
    """What `gc` removed: orphan content digests and leftover staging folders."""

    removed: list[str]
    staging_removed: int
    kept: int


def store_dir() -> Path:
    return home_dir() / "store"


def content_digest(folder: Path, manifest: Manifest) -> str:
    """sha256 over the sorted (path, sha256) pairs of every file, `lorafleet.json` included.

    Call after the checksum check: it trusts `manifest.files` for everything but the manifest itself.
    """
    entries = dict(manifest.files)
    entries[MANIFEST_NAME] = sha256_file(Path(folder) / MANIFEST_NAME)
    canonical = json.dumps(sorted(entries.items()), separators=(",", ":"))
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


def put(folder: Path, manifest: Manifest, digest: str) -> tuple[Path, bool]:
    """Make `store/<digest>/` hold the artifact's files; returns (path, True when it was already there).

    Copies exactly the files the manifest lists plus the manifest into a staging folder, re-checks
    their checksums there (the source may change under us), then renames into place. An existing
    folder is reused only if it verifies; a damaged one is replaced.
    """
    dest = content_path(digest)
    if dest.is_dir() and not _damaged(dest, manifest, digest):
        return dest, True
    staging = store_dir() / STAGING / f"{digest}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        for rel in [*manifest.files, MANIFEST_NAME]:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(folder) / rel, target, follow_symlinks=False)
        if _damaged(staging, manifest, digest):
            raise ArtifactRejected(str(folder), ["its files changed while they were being copied; push it again"])
        if dest.is_dir():  # damaged copy from before: move it aside, then replace
            trash = store_dir() / STAGING / f"damaged.{uuid.uuid4().hex[:8]}"
            os.rename(dest, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(staging, dest)  # atomic: the folder appears complete or not at all
        except OSError:
            if not dest.is_dir():  # lost a race to an identical push: theirs is as good as ours
                raise
        return dest, False
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _damaged(folder: Path, manifest: Manifest, digest: str) -> bool:
    if not (folder / MANIFEST_NAME).is_file():
        return True
    actual = {rel: sha256_file(folder / rel) for rel in manifest.files if (folder / rel).is_file()}
    return actual != manifest.files or content_digest(folder, manifest) != digest


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
            shutil.rmtree(entry)
            removed.append(entry.name)
    staging = root / STAGING
    if staging.is_dir():
        for entry in staging.iterdir():
            if time.time() - entry.stat().st_mtime >= staging_grace_s:
                shutil.rmtree(entry, ignore_errors=True)
                staging_removed += 1
    return GcReport(removed, staging_removed, kept)
