"""Pinning the base model and pushing artifacts: check → copy into the store → one transaction.

    push(dir, name) = check the name → load the manifest → find the registry's base (pin on first
                      push) → run every push check → copy into the store → insert NAME@vN
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection

from lorafleet.models import ModelError, model_fingerprint, resolve_model, tokenizer_fingerprint
from lorafleet.registry import checks, db, store
from lorafleet.registry.errors import ArtifactRejected, BaseModelMismatch, InvalidName
from lorafleet.artifact import ArtifactError, Manifest, load_manifest

# Test hook: seconds to sleep after the copy into the store and before the database commit, so a
# test can SIGKILL a push at exactly that point. Never set outside tests.
PAUSE_AFTER_COPY_ENV = "LORAFLEET_TEST_PAUSE_AFTER_COPY"


@dataclass(frozen=True)
class PushResult:
    """What push created: the new version and where its content lives."""

    version: db.AdapterVersion
    content_path: Path
    content_reused: bool  # identical content was already in the store

    @property
    def ref(self) -> str:
        return self.version.ref


def init_base(model: str) -> db.BaseModelRecord:
    """Pin `model` as the registry's base model; idempotent for the same model.

    Raises BaseModelMismatch when a different base is already pinned (one registry, one base) and
    when `model` does not resolve.
    """
    try:
        ref = resolve_model(model)
    except ModelError as exc:
        raise BaseModelMismatch(str(exc)) from None
    record = db.BaseModelRecord(
        name=ref.name, path=str(ref.path), model_fingerprint=model_fingerprint(ref.path),
        tokenizer_fingerprint=tokenizer_fingerprint(ref.path), created_at=db.now(),
    )
    return db.run_transaction(db.connect(), lambda conn: _pin(conn, record))


def _pin(conn: Connection, record: db.BaseModelRecord) -> db.BaseModelRecord:
    existing = db.get_base(conn)
    if existing is None:
        db.insert_base(conn, record)
        return record
    if existing.model_fingerprint != record.model_fingerprint:
        raise BaseModelMismatch(
            f"this registry serves base model {existing.name} ({existing.model_fingerprint[:12]}…), not {record.name} "
            f"({record.model_fingerprint[:12]}…); one registry serves one base model: use another LORAFLEET_HOME "
            "or LORAFLEET_REGISTRY_URL for another base"
        )
    return existing


def registry_base(manifest: Manifest | None = None) -> tuple[db.BaseModelRecord, Path]:
    """The pinned base and its folder; without one, pin `manifest.base_model` if it resolves."""
    base = db.run_transaction(db.connect(), db.get_base)
    if base is None:
        if manifest is None:
            raise BaseModelMismatch("this registry has no base model yet: run `lorafleet adapters init --model M`")
        try:
            resolve_model(manifest.base_model)
        except ModelError as exc:
            raise BaseModelMismatch(
                f"this registry has no base model yet and the artifact's base_model {manifest.base_model!r} does not "
                f"resolve here ({exc}); run `lorafleet adapters init --model M` first"
            ) from None
        base = init_base(manifest.base_model)
    try:
        return base, resolve_model(base.name).path
    except ModelError as exc:
        raise BaseModelMismatch(f"the registry's base model {base.name} is not available on this machine: {exc}") from None


def check_artifact(folder: Path, manifest: Manifest, base: db.BaseModelRecord, base_path: Path) -> list[str]:
    """Every push check, in the order a reader would fix them; returns all problems found."""
    problems = checks.file_problems(folder) + checks.auto_map_problems(folder) + checks.checksum_problems(folder)
    problems += checks.weights_problems(folder, base_path)
    problems += checks.fingerprint_problems(folder, manifest, base.model_fingerprint, base.tokenizer_fingerprint)
    return problems


def push(folder: Path, name: str, pushed_by: str | None = None) -> PushResult:
    """Check the artifact in `folder` and store it as the next version of `name`.

    Raises InvalidName, ArtifactRejected (listing every problem) or BaseModelMismatch; nothing is
    stored then. The copy into the store happens before the one transaction that inserts the row,
    so a crash leaves at most an orphan that the next push reuses and `gc` removes.
    """
    folder = Path(folder)
    problems = checks.name_problems(name, "adapter name")
    if problems:
        raise InvalidName("; ".join(problems))
    if not folder.is_dir():
        raise ArtifactRejected(str(folder), [f"{folder} is not a folder"])
    try:
        manifest = load_manifest(folder)
    except ArtifactError as exc:
        raise ArtifactRejected(str(folder), [str(exc)]) from None
    base, base_path = registry_base(manifest)
    problems = check_artifact(folder, manifest, base, base_path)
    if problems:
        raise ArtifactRejected(str(folder), problems)
    digest = store.content_digest(folder, manifest)
    manifest_json = (folder / "lorafleet.json").read_text(encoding="utf-8")
    user = pushed_by or _current_user()
    with store.store_lock(exclusive=False):
        path, reused = store.put(folder, manifest, digest)
        _test_pause()

        def insert(conn: Connection) -> db.AdapterVersion:
            row = db.AdapterVersion(name, db.allocate_version(conn, name), digest, manifest_json, db.now(), user)
            db.insert_version(conn, row)
            return row

        version = db.run_transaction(db.connect(), insert)
    return PushResult(version, path, reused)


def _test_pause() -> None:
    seconds = float(os.environ.get(PAUSE_AFTER_COPY_ENV) or 0)
    if seconds > 0:
        print(f"test hook: copied into the store, pausing {seconds:g}s before the commit", file=sys.stderr, flush=True)
        time.sleep(seconds)


def _current_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
