"""Who is calling: API keys from the registry, tenants' alias visibility, admin-only routes.

    require_key(request)   -> Principal   FastAPI dependency for every /v1 route (401 without a valid key)
    require_admin(request) -> Principal   FastAPI dependency for admin routes (401 without a key, 403 for a tenant key)

Both raise `GatewayError`, which the gateway answers in OpenAI's error shape. The key snapshot is
re-read from the registry every `registry_poll_s` (1 s by default), so a revoked key stops working
within that on every gateway sharing the registry. A token is verified with scrypt once per gateway
process; after that, the SHA-256 of the token it presented is what is compared.

Modes (`serve --auth`): `required`; `none` (everything open, for a loopback demo; the gateway says so
in its log, and every caller counts as an admin of all aliases); `auto` (the default) means required
as soon as the registry holds any key, revoked ones included, so revoking the last key never opens the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from typing import Literal

from fastapi import Request

from lorafleet.registry.fleet import FleetView
from lorafleet.registry.keys import ApiKey, KeySnapshot, split_token, verify_secret
from lorafleet.serve.errors import GatewayError

log = logging.getLogger("lorafleet.serve.auth")
AuthMode = Literal["auto", "required", "none"]


@dataclass(frozen=True)
class Principal:
    """The caller of one request: its key's tenant, aliases (None = all), limits and admin right."""

    tenant: str
    key_id: str | None = None
    aliases: frozenset[str] | None = None
    admin: bool = False
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None

    @classmethod
    def of(cls, key: ApiKey) -> Principal:
        aliases = frozenset(key.aliases) if key.aliases is not None else None
        return cls(key.tenant, key.key_id, aliases, key.admin, key.rpm, key.tpm, key.max_concurrency)


OPEN = Principal(tenant="anonymous", admin=True)  # every caller under --auth none


class _Abandoned(Exception):
    """A scrypt check whose request was cancelled; requests waiting on it check for themselves."""


def auth_required(mode: AuthMode, any_key_ever: bool) -> bool:
    return mode == "required" or (mode == "auto" and any_key_ever)


def may_use(principal: Principal, model: str, fleet: FleetView, base_name: str) -> bool:
    """Whether `model` (base name, alias or pinned NAME@vN) is visible to `principal`.

    The base model is visible to every key; a pinned version only when one of the key's aliases routes to it.
    """
    if principal.aliases is None or model == base_name or model in principal.aliases:
        return True
    return any(route.ref == model for name in principal.aliases if name in fleet.aliases for route in fleet.aliases[name].routes)


def visible_models(principal: Principal, fleet: FleetView, base_name: str) -> list[str]:
    """What `/v1/models` lists for `principal`: the base model, then its aliases that exist."""
    aliases = sorted(fleet.aliases) if principal.aliases is None else sorted(a for a in fleet.aliases if a in principal.aliases)
    return [base_name, *aliases]


def invalid_key() -> GatewayError:
    return GatewayError(401, "Missing or invalid API key: send Authorization: Bearer <key>.", "invalid_request_error",
                        code="invalid_api_key")


@dataclass
class AuthState:
    """One gateway's view of the keys; refreshed by the registry poll."""

    mode: AuthMode
    snapshot: KeySnapshot = field(default_factory=lambda: KeySnapshot({}, False))
    verified: dict[str, str] = field(default_factory=dict)  # key id → SHA-256 of the token that passed scrypt
    checking: dict[str, asyncio.Future[bool]] = field(default_factory=dict)  # token SHA-256 → its scrypt check under way
    scrypt_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))  # bounds CPU spent on guesses

    @property
    def required(self) -> bool:
        return auth_required(self.mode, self.snapshot.any_key_ever)

    def update(self, snapshot: KeySnapshot) -> None:
        """A fresh read of the registry: revoked (or re-created) keys lose their verified token."""
        for key_id in list(self.verified):
            current = snapshot.keys.get(key_id)
            if current is None or current.secret_hash != self.snapshot.keys.get(key_id, current).secret_hash:
                del self.verified[key_id]
        if snapshot.any_key_ever and not self.snapshot.any_key_ever and self.mode == "auto":
            log.info("the registry holds API keys: every /v1 request now needs one")
        self.snapshot = snapshot

    async def principal(self, authorization: str) -> Principal:
        """The caller for this Authorization header; raises GatewayError 401."""
        if not self.required:
            return OPEN
        scheme, _, token = authorization.partition(" ")
        parts = split_token(token.strip()) if scheme.lower() == "bearer" else None
        key = self.snapshot.keys.get(parts[0]) if parts else None
        if parts is None or key is None:
            raise invalid_key()
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        known = self.verified.get(key.key_id)
        if known is not None and hmac.compare_digest(known, digest):
            return Principal.of(key)
        ok = await self._verify(digest, parts[1], key)
        if not ok:
            raise invalid_key()
        self.verified[key.key_id] = digest
        return Principal.of(key)

    async def _verify(self, digest: str, secret: str, key: ApiKey) -> bool:
        """One scrypt per token however many of its requests arrive at once (a client's first burst)."""
        while (running := self.checking.get(digest)) is not None:
            try:
                return await asyncio.shield(running)
            except _Abandoned:  # that request went away mid-check: check here instead
                continue
        pending: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.checking[digest] = pending
        try:
            async with self.scrypt_slots:
                ok = await asyncio.to_thread(verify_secret, secret, key.secret_hash)
            pending.set_result(ok)
            return ok
        except BaseException:
            pending.set_exception(_Abandoned())
            pending.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self.checking[digest]


async def require_key(request: Request) -> Principal:
    """FastAPI dependency: the caller's Principal, or a 401 in OpenAI's error shape."""
    return await request.app.state.gateway.auth.principal(request.headers.get("authorization", ""))


async def require_admin(request: Request) -> Principal:
    """FastAPI dependency for admin routes: an admin key's Principal; 401 without a valid key, 403 for a tenant key.

    Use as `Depends(require_admin)` on any route of the gateway app (the app answers GatewayError in OpenAI's shape).
    """
    principal = await require_key(request)
    if not principal.admin:
        raise GatewayError(403, "This endpoint needs an admin key.", "permission_error", code="admin_key_required")
    return principal
