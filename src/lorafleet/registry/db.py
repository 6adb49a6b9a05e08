"""Registry metadata: SQLAlchemy Core over SQLite (default) or PostgreSQL, with versioned migrations.

`LORAFLEET_REGISTRY_URL` picks the database: unset → SQLite at `LORAFLEET_HOME/registry.db` in WAL
mode; `postgresql://…` → PostgreSQL through psycopg 3. Every change runs in one transaction via
`run_transaction`; SQLite transactions start with BEGIN IMMEDIATE so writers queue instead of
failing, and allocations that race (version numbers, alias revisions) retry on a unique-key conflict.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from lorafleet.paths import home_dir
from lorafleet.registry.aliases import Action, AliasRevision, Route
from lorafleet.registry.schema import (  # the rows and the schema version are part of db's interface
    MIGRATIONS, SCHEMA_VERSION, AdapterVersion, BaseModelRecord, adapter_names, adapter_versions, alias_revisions,
    alias_routes, base_model, eval_runs, schema_version,
)

T = TypeVar("T")


def registry_url() -> str:
    """`LORAFLEET_REGISTRY_URL`, or SQLite at `LORAFLEET_HOME/registry.db`; postgresql:// gets the psycopg 3 driver."""
    url = os.environ.get("LORAFLEET_REGISTRY_URL")
    if not url:
        home = home_dir()
        home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{home / 'registry.db'}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def connect(url: str | None = None) -> Engine:
    """The engine for `url` (default: registry_url()), created once per process and migrated to SCHEMA_VERSION."""
    return _engine(url or registry_url())


@lru_cache(maxsize=None)
def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # the driver must not open transactions; "begin" below does
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA busy_timeout = 60000")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock now: no deadlocking upgrades later
    else:
        engine = create_engine(url, pool_pre_ping=True)
    run_transaction(engine, migrate)
    return engine


def migrate(conn: Connection) -> int:
    """Apply every migration newer than the stored schema version; returns the version reached."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(74201)"))  # one migrator at a time across processes
    schema_version.create(conn, checkfirst=True)
    current = conn.execute(select(schema_version.c.version)).scalar()
    if current is None:
        conn.execute(insert(schema_version).values(version=0))
        current = 0
    if current > SCHEMA_VERSION:
        raise RuntimeError(f"registry schema is version {current}, newer than this lorafleet ({SCHEMA_VERSION}); upgrade lorafleet")
    for step in range(current, SCHEMA_VERSION):
        MIGRATIONS[step](conn)
    conn.execute(update(schema_version).values(version=SCHEMA_VERSION))
    return SCHEMA_VERSION


def run_transaction(engine: Engine, work: Callable[[Connection], T], attempts: int = 10) -> T:
    """Run `work(conn)` in one transaction, retrying from scratch when a concurrent writer won a race."""
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                return work(conn)
        except (IntegrityError, DBAPIError) as exc:
            retriable = isinstance(exc, IntegrityError) or _is_serialization_failure(exc)
            if not retriable or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
    raise AssertionError("unreachable")


def _is_serialization_failure(exc: DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None)
    return code in {"40001", "40P01"} or "database is locked" in str(exc.orig)


def now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)  # SQLite drops the zone


# ---- base model ----------------------------------------------------------------------------------

def get_base(conn: Connection) -> BaseModelRecord | None:
    row = conn.execute(select(base_model).where(base_model.c.id == 1)).mappings().first()
    if row is None:
        return None
    return BaseModelRecord(row["name"], row["path"], row["model_fingerprint"], row["tokenizer_fingerprint"], _utc(row["created_at"]))


def insert_base(conn: Connection, record: BaseModelRecord) -> None:
    """Pin the base model; a concurrent pin makes this raise IntegrityError (run_transaction retries)."""
    conn.execute(insert(base_model).values(id=1, **record.__dict__))


def update_base_fingerprint(conn: Connection, model_fingerprint: str) -> None:
    """Replace the pinned model fingerprint (the one-time move from fingerprint scheme 1 to 2)."""
    conn.execute(update(base_model).where(base_model.c.id == 1).values(model_fingerprint=model_fingerprint))


# ---- versions ------------------------------------------------------------------------------------

def allocate_version(conn: Connection, name: str) -> int:
    """The next version number for `name`, reserved in this transaction (never reused, even after rm)."""
    if conn.execute(select(adapter_names.c.name).where(adapter_names.c.name == name)).first() is None:
        conn.execute(insert(adapter_names).values(name=name, last_version=0))  # a racing first push → retry
    conn.execute(update(adapter_names).where(adapter_names.c.name == name).values(last_version=adapter_names.c.last_version + 1))
    return conn.execute(select(adapter_names.c.last_version).where(adapter_names.c.name == name)).scalar_one()


def insert_version(conn: Connection, version: AdapterVersion) -> None:
    conn.execute(insert(adapter_versions).values(**version.__dict__))


def get_version(conn: Connection, name: str, version: int | None = None, lock: bool = False) -> AdapterVersion | None:
    """`name@vversion`, or the latest version of `name` when version is None; `lock` holds the row to commit."""
    query = select(adapter_versions).where(adapter_versions.c.name == name)
    if version is None:
        query = query.order_by(adapter_versions.c.version.desc()).limit(1)
    else:
        query = query.where(adapter_versions.c.version == version)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    return _version(row) if row else None


def list_versions(conn: Connection) -> list[AdapterVersion]:
    rows = conn.execute(select(adapter_versions).order_by(adapter_versions.c.name, adapter_versions.c.version)).mappings()
    return [_version(row) for row in rows]


def delete_version(conn: Connection, name: str, version: int) -> None:
    """The version's row and its recorded evals (a number is never reissued, but its evals mean nothing without it)."""
    conn.execute(eval_runs.delete().where(eval_runs.c.name == name, eval_runs.c.version == version))
    conn.execute(adapter_versions.delete().where(adapter_versions.c.name == name, adapter_versions.c.version == version))


def referenced_contents(conn: Connection) -> set[str]:
    return set(conn.execute(select(adapter_versions.c.content_sha256).distinct()).scalars())


def _version(row) -> AdapterVersion:  # type: ignore[no-untyped-def]
    return AdapterVersion(row["name"], row["version"], row["content_sha256"], row["manifest"], _utc(row["created_at"]), row["pushed_by"])


# ---- aliases -------------------------------------------------------------------------------------

def live_routes(conn: Connection) -> dict[str, list[Route]]:
    """alias → the routes of its live (latest) revision."""
    latest = (
        select(alias_revisions.c.alias, func.max(alias_revisions.c.revision).label("revision"))
        .group_by(alias_revisions.c.alias)
        .subquery()
    )
    query = (
        select(alias_routes)
        .join(latest, (alias_routes.c.alias == latest.c.alias) & (alias_routes.c.revision == latest.c.revision))
        .order_by(alias_routes.c.alias, alias_routes.c.weight.desc(), alias_routes.c.name, alias_routes.c.version)
    )
    result: dict[str, list[Route]] = {}
    for row in conn.execute(query).mappings():
        result.setdefault(row["alias"], []).append(Route(row["name"], row["version"], row["weight"]))
    return result


def alias_history(conn: Connection, alias: str) -> list[AliasRevision]:
    """Every revision of `alias`, oldest first."""
    routes: dict[int, list[Route]] = {}
    route_rows = conn.execute(
        select(alias_routes).where(alias_routes.c.alias == alias)
        .order_by(alias_routes.c.revision, alias_routes.c.weight.desc(), alias_routes.c.name, alias_routes.c.version)
    ).mappings()
    for row in route_rows:
        routes.setdefault(row["revision"], []).append(Route(row["name"], row["version"], row["weight"]))
    rows = conn.execute(
        select(alias_revisions).where(alias_revisions.c.alias == alias).order_by(alias_revisions.c.revision)
    ).mappings()
    return [
        AliasRevision(alias, r["revision"], r["action"], tuple(routes.get(r["revision"], [])), r["fallback_prompt"],
                      r["previous_revision"], _utc(r["created_at"]))
        for r in rows
    ]


def append_alias_revision(
    conn: Connection, alias: str, action: Action, routes: tuple[Route, ...], fallback_prompt: str | None,
    previous_revision: int | None,
) -> AliasRevision:
    """Append the next revision of `alias` with its routes; a racing writer makes this raise IntegrityError."""
    last = conn.execute(select(func.max(alias_revisions.c.revision)).where(alias_revisions.c.alias == alias)).scalar()
    revision = (last or 0) + 1
    created_at = now()
    conn.execute(insert(alias_revisions).values(
        alias=alias, revision=revision, action=action, fallback_prompt=fallback_prompt,
        previous_revision=previous_revision, created_at=created_at,
    ))
    conn.execute(insert(alias_routes), [
        {"alias": alias, "revision": revision, "name": r.name, "version": r.version, "weight": r.weight} for r in routes
    ])
    return AliasRevision(alias, revision, action, routes, fallback_prompt, previous_revision, created_at)
