"""Pinning the base model and pushing artifacts: stage → check the staged copy → commit it → one transaction.

    push(dir, name) = check the name → copy dir into a private staging folder (intake.py) → load the
                      staged manifest → find the registry's base (pin on first push) → run every check
                      on the staged copy → rename it into the store → insert NAME@vN

What is stored is exactly what was checked: the checks and the store read the staged copy, which
only this process writes and which is read-only once copied; the pushed folder is read once.
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from sqlalchemy import Connection

from lorafleet.artifact import MANIFEST_NAME, ArtifactError, Manifest, checksum_problems, load_manifest
from lorafleet.fingerprints import ProgressCallback, base_fingerprints
from lorafleet.models import ModelError, resolve_model
from lorafleet.registry import checks, db, intake, store
from lorafleet.registry.checks import RegistryBase
from lorafleet.registry.errors import ArtifactRejected, BaseModelMismatch, InvalidName
from lorafleet.registry.intake import IntakeLimits, StagedArtifact

# Test hook: seconds to sleep after the copy into the store and before the database commit, so a
# test can SIGKILL a push at exactly that point (from another process). Never set outside tests.
PAUSE_AFTER_COPY_ENV = "LORAFLEET_TEST_PAUSE_AFTER_COPY"

PushPhase = Literal["staged", "checked"]


@dataclass(frozen=True)
class PushEvent:
    """A push reached `phase`: "staged" (copied, not yet checked) or "checked" (every check passed, not yet stored)."""

    phase: PushPhase
    source: Path
    staged: StagedArtifact


PushHook = Callable[[PushEvent], None]


@dataclass(frozen=True)
class PushResult:
    """What push created: the new version and where its content lives."""

    version: db.AdapterVersion
    content_path: Path
    content_reused: bool  # identical content was already in the store

    @property
    def ref(self) -> str:
        return self.version.ref


def init_base(model: str, on_progress: ProgressCallback | None = None) -> db.BaseModelRecord:
    """Pin `model` as the registry's base model; idempotent for the same model.

    Raises BaseModelMismatch when a different base is already pinned (one registry, one base) and
    when `model` does not resolve. A pin made with fingerprint scheme 1 is moved to scheme 2 when
    the model's scheme-1 fingerprint still matches it.
    """
    try:
        ref = resolve_model(model)
        fingerprints = base_fingerprints(ref.path, on_progress=on_progress)
    except ModelError as exc:
        raise BaseModelMismatch(str(exc)) from None
    record = db.BaseModelRecord(
        name=ref.name, path=str(ref.path), model_fingerprint=fingerprints.model,
        tokenizer_fingerprint=fingerprints.tokenizer, created_at=db.now(),
    )
    return db.run_transaction(db.connect(), lambda conn: _pin(conn, record, fingerprints.legacy_model))


def _pin(conn: Connection, record: db.BaseModelRecord, legacy: str) -> db.BaseModelRecord:
    existing = db.get_base(conn)
    if existing is None:
        db.insert_base(conn, record)
        return record
    if existing.model_fingerprint == legacy:
        db.update_base_fingerprint(conn, record.model_fingerprint)
        return replace(existing, model_fingerprint=record.model_fingerprint)
    if existing.model_fingerprint != record.model_fingerprint:
        raise BaseModelMismatch(
            f"this registry serves base model {existing.name} ({existing.model_fingerprint[:12]}…), not {record.name} "
            f"({record.model_fingerprint[:12]}…); one registry serves one base model: use another LORAFLEET_HOME "
            "or LORAFLEET_REGISTRY_URL for another base"
        )
    return existing


def registry_base(manifest: Manifest | None = None) -> RegistryBase:
    """The pinned base, its folder and fingerprints; without a pin, pin `manifest.base_model` if it resolves.

    Raises BaseModelMismatch when the base is missing here or its files no longer match the pin.
    """
    record = db.run_transaction(db.connect(), db.get_base)
    if record is None:
        if manifest is None:
            raise BaseModelMismatch("this registry has no base model yet: run `lorafleet adapters init --model M`")
        try:
            resolve_model(manifest.base_model)
        except ModelError as exc:
            raise BaseModelMismatch(
                f"this registry has no base model yet and the artifact's base_model {manifest.base_model!r} does not "
                f"resolve here ({exc}); run `lorafleet adapters init --model M` first"
            ) from None
        record = init_base(manifest.base_model)
    try:
        path = resolve_model(record.name).path
        fingerprints = base_fingerprints(path)
    except ModelError as exc:
        raise BaseModelMismatch(f"the registry's base model {record.name} is not usable on this machine: {exc}") from None
    if record.model_fingerprint == fingerprints.legacy_model:  # pinned by an earlier lorafleet: move to scheme 2
        current = replace(record, model_fingerprint=fingerprints.model)
        record = db.run_transaction(db.connect(), lambda conn: _pin(conn, current, fingerprints.legacy_model))
    if record.model_fingerprint != fingerprints.model:
        raise BaseModelMismatch(
            f"the registry's base model {record.name} at {path} has fingerprint {fingerprints.model}, not the "
            f"{record.model_fingerprint} it was pinned with: its files changed. Restore them, or use another "
            "LORAFLEET_HOME / LORAFLEET_REGISTRY_URL for the changed model"
        )
    return RegistryBase(record, path, fingerprints)


def check_staged(staged: StagedArtifact, manifest: Manifest, base: RegistryBase, limits: IntakeLimits = IntakeLimits()) -> list[str]:
    """Every push check on the staged copy, in the order a reader would fix them; returns all problems found."""
    problems = list(staged.problems) + checks.file_problems(staged.files)
    documents, parse_problems = checks.parse_documents(staged.root, staged.files, limits.json_limits)
    problems += parse_problems
    problems += checksum_problems(manifest.files, staged.checksums(include_manifest=False))
    problems += checks.adapter_problems(staged.root, documents, manifest, base.path)
    problems += checks.fingerprint_problems(staged.root, documents, staged.checksums(), manifest, base)
    return problems


def push(
    folder: Path, name: str, pushed_by: str | None = None, *,
    limits: IntakeLimits = IntakeLimits(), on_phase: PushHook | None = None,
) -> PushResult:
    """Check the artifact in `folder` and store it as the next version of `name`.

    Raises InvalidName, ArtifactRejected (listing every problem) or BaseModelMismatch; nothing is
    stored then. `on_phase` is called when the push reaches each PushPhase (progress display, and
    tests that change the source folder at exactly that point). The store commit happens before the
    one transaction that inserts the row, so a crash leaves at most an orphan that the next push
    reuses and `gc` removes.
    """
    folder = Path(folder)
    problems = checks.name_problems(name, "adapter name")
    if problems:
        raise InvalidName("; ".join(problems))
    if not folder.is_dir():
        raise ArtifactRejected(str(folder), [f"{folder} is not a folder"])
    with store.store_lock(exclusive=False), intake.staging_area(store.staging_dir()) as area:
        staged = stage_artifact(folder, area, limits)
        _notify(on_phase, "staged", folder, staged)
        manifest = staged_manifest(folder, staged)
        base = registry_base(manifest)
        problems = check_staged(staged, manifest, base, limits)
        if problems:
            raise ArtifactRejected(str(folder), problems)
        _notify(on_phase, "checked", folder, staged)
        checksums = staged.checksums()
        digest = store.content_digest(checksums)
        manifest_json = (staged.root / MANIFEST_NAME).read_text(encoding="utf-8")
        path, reused = store.commit(staged.root, checksums, digest)
        _test_pause()
        user = pushed_by or _current_user()

        def insert(conn: Connection) -> db.AdapterVersion:
            row = db.AdapterVersion(name, db.allocate_version(conn, name), digest, manifest_json, db.now(), user)
            db.insert_version(conn, row)
            return row

        version = db.run_transaction(db.connect(), insert)
    return PushResult(version, path, reused)


def stage_artifact(folder: Path, area: Path, limits: IntakeLimits = IntakeLimits()) -> StagedArtifact:
    """Copy `folder` into `area/artifact` (intake.stage); an unreadable folder is a refusal."""
    try:
        return intake.stage(folder, area / "artifact", limits)
    except OSError as exc:
        raise ArtifactRejected(str(folder), [f"{folder}: cannot be read ({exc.strerror})"]) from None


def staged_manifest(folder: Path, staged: StagedArtifact) -> Manifest:
    """The staged manifest; without a usable one, the refusal lists it together with what staging found."""
    try:
        return load_manifest(staged.root)
    except ArtifactError as exc:
        raise ArtifactRejected(str(folder), [*staged.problems, str(exc).replace(str(staged.root), str(folder))]) from None


def _notify(hook: PushHook | None, phase: PushPhase, source: Path, staged: StagedArtifact) -> None:
    if hook is not None:
        hook(PushEvent(phase, source, staged))


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
