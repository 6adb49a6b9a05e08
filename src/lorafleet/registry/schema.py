"""Registry schema: the tables, their migrations, and the typed rows the registry hands out.

Migration N brings the schema from version N-1 to N; append new ones, never edit old ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Boolean, Column, Connection, DateTime, Index, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text,
)

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))
base_model = Table(
    "base_model", metadata,
    Column("id", Integer, primary_key=True),  # always 1: one registry serves one base model
    Column("name", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("model_fingerprint", String(64), nullable=False),
    Column("tokenizer_fingerprint", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
# The highest version ever given to a name, so a removed NAME@vN is never reissued to other content.
adapter_names = Table(
    "adapter_names", metadata,
    Column("name", String(63), primary_key=True),
    Column("last_version", Integer, nullable=False),
)
adapter_versions = Table(
    "adapter_versions", metadata,
    Column("name", String(63), nullable=False),
    Column("version", Integer, nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("manifest", Text, nullable=False),  # lorafleet.json as pushed
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("pushed_by", Text),
    PrimaryKeyConstraint("name", "version"),
    Index("ix_adapter_versions_content", "content_sha256"),
)
alias_revisions = Table(
    "alias_revisions", metadata,
    Column("alias", String(63), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("action", String(16), nullable=False),
    Column("fallback_prompt", Text),
    Column("previous_revision", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("alias", "revision"),
)
alias_routes = Table(
    "alias_routes", metadata,
    Column("alias", String(63), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("name", String(63), nullable=False),
    Column("version", Integer, nullable=False),
    Column("weight", Integer, nullable=False),
    PrimaryKeyConstraint("alias", "revision", "name", "version"),
    Index("ix_alias_routes_target", "name", "version"),
)

# Gateway API keys: only a salted scrypt hash of each secret is stored (registry.keys); `aliases` is a
# JSON list of the aliases the key may use, NULL for every alias. A revoked key keeps its row.
api_keys = Table(
    "api_keys", metadata,
    Column("key_id", String(32), primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("secret_hash", Text, nullable=False),
    Column("aliases", Text),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("max_concurrency", Integer),
    Column("admin", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

# `lorafleet eval --record` results, one row per adapter version that answered (registry.evals); `summary`
# is the JSON of evals.EvalSummary. Rows go with their version on `adapters rm`.
eval_runs = Table(
    "eval_runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(63), nullable=False),
    Column("version", Integer, nullable=False),
    Column("model", Text, nullable=False),  # what the eval asked for: an alias or NAME@vN
    Column("started_at", Text, nullable=False),  # when the eval ran (ISO 8601, UTC)
    Column("data_name", Text, nullable=False),
    Column("data_sha256", String(64), nullable=False),
    Column("cases", Integer, nullable=False),  # conversations this version answered
    Column("run_cases", Integer, nullable=False),  # conversations sent for `model` in all
    Column("summary", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Index("ix_eval_runs_version", "name", "version"),
)

MIGRATIONS: list[Callable[[Connection], None]] = [
    lambda conn: metadata.create_all(
        conn, tables=[base_model, adapter_names, adapter_versions, alias_revisions, alias_routes]
    ),
    lambda conn: metadata.create_all(conn, tables=[api_keys]),
    lambda conn: metadata.create_all(conn, tables=[eval_runs]),
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class BaseModelRecord:
    """The base model this registry serves."""

    name: str
    path: str
    model_fingerprint: str
    tokenizer_fingerprint: str
    created_at: datetime


@dataclass(frozen=True)
class AdapterVersion:
    """One immutable pushed version: `name@vN` → content in the store plus its manifest."""

    name: str
    version: int
    content_sha256: str
    manifest: str
    created_at: datetime
    pushed_by: str | None

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"
