"""Gateway API keys in the registry: create (the secret is shown once), list, revoke, and the snapshot
every gateway polls.

A key reads `lfk_<key id>_<secret>`. The key id is public (it names the key in `keys list` and in
logs); the secret is 32 random bytes of which only a salted scrypt hash is stored, so a copy of the
database gives no usable key. Verifying costs one scrypt (tens of milliseconds, on purpose): the
gateway remembers which presented token it already verified for a key id (serve.auth), so a client
pays it once per gateway process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select, update

from lorafleet.registry import db
from lorafleet.registry.errors import InvalidSpec, NotFound
from lorafleet.registry.schema import api_keys

PREFIX = "lfk"
# scrypt cost: 2**14 × 8 × 1 takes 16 MiB and tens of milliseconds, the interactive-login level of the scrypt paper.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class ApiKey:
    """One key as stored (never its secret). `aliases` None means every alias."""

    key_id: str
    tenant: str
    secret_hash: str
    aliases: tuple[str, ...] | None
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    admin: bool
    created_at: datetime
    revoked_at: datetime | None

    def public(self) -> dict:
        """What `keys list` and the admin API show: everything but the hash."""
        return {"key_id": self.key_id, "tenant": self.tenant, "aliases": list(self.aliases) if self.aliases is not None else "all",
                "rpm": self.rpm, "tpm": self.tpm, "max_concurrency": self.max_concurrency, "admin": self.admin,
                "created_at": self.created_at.isoformat(), "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


@dataclass(frozen=True)
class KeySnapshot:
    """What a gateway needs at one instant: the usable (unrevoked) keys, and whether any key was ever made."""

    keys: dict[str, ApiKey]
    any_key_ever: bool


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$hash` (hex) of `secret` with a fresh 16-byte salt unless one is given."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_LEN)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_secret(secret: str, stored: str) -> bool:
    """True when `secret` hashes to `stored` (constant-time compare); False for a malformed stored value."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=len(digest) // 2)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(computed.hex(), digest)


def split_token(token: str) -> tuple[str, str] | None:
    """`lfk_<id>_<secret>` → (id, secret); None for anything else."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != PREFIX or not re.fullmatch(r"[0-9a-f]{12}", key_id) or not secret:
        return None
    return key_id, secret


def create_key(tenant: str, aliases: list[str] | None, rpm: int | None = None, tpm: int | None = None,
               max_concurrency: int | None = None, admin: bool = False) -> tuple[ApiKey, str]:
    """A new key for `tenant`; returns it and the full token, which is never stored or shown again.

    `aliases` None gives every alias. Raises InvalidSpec for a bad tenant name, an empty alias list or a non-positive limit.
    """
    if not _TENANT.fullmatch(tenant):
        raise InvalidSpec(f"tenant {tenant!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if aliases is not None and not aliases:
        raise InvalidSpec("--aliases names no alias: give at least one, or --all")
    for name, value in (("rpm", rpm), ("tpm", tpm), ("max-concurrency", max_concurrency)):
        if value is not None and value < 1:
            raise InvalidSpec(f"--{name} must be at least 1, not {value}")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    record = ApiKey(key_id, tenant, hash_secret(secret), tuple(sorted(set(aliases))) if aliases is not None else None,
                    rpm, tpm, max_concurrency, admin, db.now(), None)

    def write(conn: Connection) -> None:
        values = {**record.__dict__, "aliases": json.dumps(list(record.aliases)) if record.aliases is not None else None}
        conn.execute(insert(api_keys).values(**values))

    db.run_transaction(db.connect(), write)
    return record, f"{PREFIX}_{key_id}_{secret}"


def list_keys() -> list[ApiKey]:
    """Every key, revoked ones too, oldest first."""
    return db.run_transaction(db.connect(), _all)


def revoke_key(key_id: str) -> ApiKey:
    """Mark `key_id` revoked (idempotent: a revoked key keeps its first revocation time). Raises NotFound."""
    def change(conn: Connection) -> ApiKey:
        row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).mappings().first()
        if row is None:
            raise NotFound(f"no API key {key_id!r} (see `lorafleet keys list`)")
        if row["revoked_at"] is None:
            conn.execute(update(api_keys).where(api_keys.c.key_id == key_id).values(revoked_at=db.now()))
        return _key(conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).mappings().one())

    return db.run_transaction(db.connect(), change)


def read_key_snapshot() -> KeySnapshot:
    """The usable keys and whether any key exists at all (a revoked one counts: revoking the last key
    must not turn authentication off)."""
    def read(conn: Connection) -> KeySnapshot:
        every = _all(conn)
        return KeySnapshot({k.key_id: k for k in every if k.revoked_at is None}, bool(every))

    return db.run_transaction(db.connect(), read)


def _all(conn: Connection) -> list[ApiKey]:
    rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.key_id)).mappings()
    return [_key(row) for row in rows]


def _key(row) -> ApiKey:  # type: ignore[no-untyped-def]
    aliases = tuple(json.loads(row["aliases"])) if row["aliases"] is not None else None
    revoked = row["revoked_at"]
    return ApiKey(row["key_id"], row["tenant"], row["secret_hash"], aliases, row["rpm"], row["tpm"], row["max_concurrency"],
                  bool(row["admin"]), db._utc(row["created_at"]), db._utc(revoked) if revoked is not None else None)
