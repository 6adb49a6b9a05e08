"""What a serving fleet needs from the registry, read in one transaction: the base model, every
alias's live routing with its fallback prompt, and every version's store path and serving limits.

The gateway polls `read_fleet` (it is cheap: a few small queries), so alias changes reach it
without a restart, and several gateways on one registry see the same fleet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection

from lorafleet.registry import db, store
from lorafleet.registry.aliases import Route


@dataclass(frozen=True)
class ServedVersion:
    """One stored version as serving sees it: where its files are and what the engine must allow."""

    name: str
    version: int
    content_path: Path
    max_seq_length: int
    rank: int
    use_dora: bool

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


@dataclass(frozen=True)
class ServedAlias:
    """An alias's live routing (its latest revision) and the prompt its fallback answers with."""

    alias: str
    revision: int
    routes: tuple[Route, ...]
    fallback_prompt: str | None


@dataclass(frozen=True)
class FleetView:
    """The registry as serving sees it at one instant."""

    base: db.BaseModelRecord | None
    aliases: dict[str, ServedAlias]
    versions: dict[str, ServedVersion]  # keyed by NAME@vN

    def routed_versions(self) -> list[ServedVersion]:
        """The versions some alias routes traffic to now, in ref order."""
        refs = {route.ref for alias in self.aliases.values() for route in alias.routes}
        return [self.versions[ref] for ref in sorted(refs) if ref in self.versions]


def read_fleet() -> FleetView:
    """The base model, the live aliases and all versions, read in one transaction."""
    return db.run_transaction(db.connect(), _read)


def _read(conn: Connection) -> FleetView:
    versions = {v.ref: _served_version(v) for v in db.list_versions(conn)}
    aliases: dict[str, ServedAlias] = {}
    for alias in db.live_routes(conn):
        live = db.alias_history(conn, alias)[-1]
        aliases[alias] = ServedAlias(alias, live.revision, live.routes, live.fallback_prompt)
    return FleetView(db.get_base(conn), aliases, versions)


def _served_version(v: db.AdapterVersion) -> ServedVersion:
    manifest = json.loads(v.manifest)
    lora = manifest.get("lora", {})
    return ServedVersion(
        name=v.name, version=v.version, content_path=store.content_path(v.content_sha256),
        max_seq_length=int(manifest.get("max_seq_length", 0)), rank=int(lora.get("r", 0)),
        use_dora=bool(lora.get("use_dora", False)),
    )
