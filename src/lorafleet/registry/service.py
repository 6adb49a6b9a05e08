"""What the `lorafleet adapters` commands do, one function each (push and init live in push.py).

Each function opens the registry, runs its change in one transaction, and returns typed results
that `to_jsonable` turns into the `--json` output.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path

from sqlalchemy import Connection

from lorafleet.bounded_json import MAX_JSON_BYTES, JsonRefused, parse_json, read_capped
from lorafleet.registry import aliases, checks, db, evals, store
from lorafleet.registry.aliases import AliasRevision, Route
from lorafleet.registry.errors import InUse, InvalidName, NotFound
from lorafleet.registry.store import GcReport


@dataclass(frozen=True)
class VersionSummary:
    """A row of `adapters list`: one version and the aliases that route to it (`alias=weight`)."""

    ref: str
    name: str
    version: int
    content_sha256: str
    created_at: datetime
    pushed_by: str | None
    aliases: list[str]


@dataclass(frozen=True)
class VersionDetail:
    """`adapters show`: the version, its manifest, its metrics log, its checksums, its aliases and its recorded evals."""

    summary: VersionSummary
    content_path: str
    manifest: dict
    checksums: dict[str, str]
    metrics: list[dict]
    evals: list[evals.EvalRecord] = field(default_factory=list)  # `lorafleet eval --record` runs, newest first


def list_adapters() -> list[VersionSummary]:
    """Every stored version, by name then version, with the aliases that route to it now."""
    def read(conn: Connection) -> list[VersionSummary]:
        pointers = _pointers(db.live_routes(conn))
        return [_summary(v, pointers) for v in db.list_versions(conn)]

    return db.run_transaction(db.connect(), read)


def show(ref: str) -> VersionDetail:
    """`NAME@vN`, or the latest version of NAME. Raises NotFound."""
    name, version = aliases.parse_ref(ref)

    def read(conn: Connection) -> tuple[db.AdapterVersion, dict, list[evals.EvalRecord]]:
        found = db.get_version(conn, name, version)
        if found is None:
            raise NotFound(_missing(ref))
        return found, _pointers(db.live_routes(conn)), evals.read(conn, found.name, found.version)

    found, pointers, recorded = db.run_transaction(db.connect(), read)
    manifest = json.loads(found.manifest)
    path = store.content_path(found.content_sha256)
    return VersionDetail(_summary(found, pointers), str(path), manifest, manifest.get("files", {}), _metrics(path), recorded)


def remove(ref: str) -> VersionSummary:
    """Delete `NAME@vN`'s row (its content goes at the next gc). Raises InUse while an alias routes to it."""
    name, version = aliases.parse_version_ref(ref)

    def delete(conn: Connection) -> VersionSummary:
        found = db.get_version(conn, name, version, lock=True)  # locked: no alias can start routing to it now
        if found is None:
            raise NotFound(_missing(ref))
        users = _pointers(db.live_routes(conn)).get((name, version), [])
        if users:
            raise InUse(
                f"{ref} is routed to by alias(es) {', '.join(users)}; point them elsewhere first "
                "(`lorafleet adapters promote ALIAS NAME@vN` or `alias set`)"
            )
        db.delete_version(conn, name, version)
        return _summary(found, {})

    return db.run_transaction(db.connect(), delete)


def set_alias(alias: str, targets: list[str], fallback_prompt: str | None = None) -> AliasRevision:
    """Route `alias` to `targets` (`NAME@vN[=WEIGHT]`, weights summing to 100) as its next revision.

    Without `fallback_prompt` the alias keeps its current one. Raises InvalidName, InvalidSpec, NotFound.
    """
    _check_alias_name(alias)
    routes = aliases.parse_routing(targets)
    return _append(alias, "set", routes, fallback_prompt, keep_fallback=fallback_prompt is None)


def promote(alias: str, ref: str) -> AliasRevision:
    """Send 100% of `alias`'s traffic to `NAME@vN`, keeping its fallback prompt."""
    _check_alias_name(alias)
    return _append(alias, "promote", aliases.promote_routing(*aliases.parse_version_ref(ref)), None, keep_fallback=True)


def rollback(alias: str) -> AliasRevision:
    """Restore the routing that was live before the current one (see aliases.rollback_plan)."""
    _check_alias_name(alias)

    def change(conn: Connection) -> AliasRevision:
        restored, previous = aliases.rollback_plan(db.alias_history(conn, alias))
        _require_versions(conn, restored.routes)
        return db.append_alias_revision(conn, alias, "rollback", restored.routes, restored.fallback_prompt, previous)

    return db.run_transaction(db.connect(), change)


def history(alias: str) -> list[AliasRevision]:
    """Every routing change of `alias`, oldest first. Raises NotFound for an unknown alias."""
    revisions = db.run_transaction(db.connect(), lambda conn: db.alias_history(conn, alias))
    if not revisions:
        raise NotFound(f"no alias {alias!r}: create it with `lorafleet adapters alias set {alias} NAME@vN`")
    return revisions


def gc() -> GcReport:
    """Remove store content that no version references, and leftovers of interrupted copies."""
    with store.store_lock(exclusive=True):
        referenced = db.run_transaction(db.connect(), db.referenced_contents)
        return store.gc(referenced)


def to_jsonable(value: object) -> object:
    """Results → plain JSON values (dataclasses to objects, datetimes to ISO 8601)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (Path, Enum)):
        return str(value)
    return value


def _append(alias: str, action: aliases.Action, routes: tuple[Route, ...], fallback: str | None, keep_fallback: bool) -> AliasRevision:
    def change(conn: Connection) -> AliasRevision:
        _require_versions(conn, routes)
        past = db.alias_history(conn, alias)
        live = past[-1] if past else None
        prompt = live.fallback_prompt if keep_fallback and live else fallback
        return db.append_alias_revision(conn, alias, action, routes, prompt, live.revision if live else None)

    return db.run_transaction(db.connect(), change)


def _require_versions(conn: Connection, routes: tuple[Route, ...]) -> None:
    for route in routes:
        if db.get_version(conn, route.name, route.version, lock=True) is None:  # locked against a concurrent rm
            raise NotFound(_missing(route.ref))


def _check_alias_name(alias: str) -> None:
    problems = checks.name_problems(alias, "alias name")
    if problems:
        raise InvalidName("; ".join(problems))


def _pointers(live: dict[str, list[Route]]) -> dict[tuple[str, int], list[str]]:
    result: dict[tuple[str, int], list[str]] = {}
    for alias, routes in live.items():
        for route in routes:
            result.setdefault((route.name, route.version), []).append(f"{alias}={route.weight}")
    return result


def _summary(v: db.AdapterVersion, pointers: dict[tuple[str, int], list[str]]) -> VersionSummary:
    return VersionSummary(v.ref, v.name, v.version, v.content_sha256, v.created_at, v.pushed_by, pointers.get((v.name, v.version), []))


def _metrics(path: Path) -> list[dict]:
    """metrics.jsonl's lines, parsed with limits; a line that does not parse becomes {"unreadable": why}."""
    log = path / "metrics.jsonl"
    if not log.is_file():
        return []
    try:
        data = read_capped(log, MAX_JSON_BYTES, "metrics.jsonl")
    except JsonRefused as exc:
        return [{"unreadable": str(exc)}]
    lines: list[dict] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if line.strip():
            try:
                value = parse_json(line, f"metrics.jsonl line {number}")
                lines.append(value if isinstance(value, dict) else {"value": value})
            except JsonRefused as exc:
                lines.append({"unreadable": str(exc)})
    return lines


def _missing(ref: str) -> str:
    return f"no adapter version {ref} in this registry; see `lorafleet adapters list`"
