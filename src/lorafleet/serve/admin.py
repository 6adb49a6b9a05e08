"""Admin routes of the gateway, each behind `require_admin` (a tenant key gets 403, no key 401):

    GET  /admin/keys                  every key, without secrets or hashes
    POST /admin/keys                  create a key; the answer carries its token, the only time it is shown
    POST /admin/keys/{key_id}/revoke  revoke a key (every gateway on the registry refuses it within ~1 s)
    PUT  /admin/aliases/{alias}       route an alias: {"targets": ["NAME@vN=W", ...], "fallback_prompt": ...}
    GET  /admin/replicas              engine replicas: health, resident adapters, requests in flight, open breakers
    POST /admin/replicas/{replica}/load    {"version": "NAME@vN"}: make a version resident (warm it before traffic)
    POST /admin/replicas/{replica}/unload  {"version": "NAME@vN"}: evict it (it loads again on its next request)
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorafleet.registry import keys as registry_keys
from lorafleet.registry.fleet import ServedVersion
from lorafleet.registry import service
from lorafleet.registry.errors import NotFound, RegistryError
from lorafleet.serve.auth import Principal, require_admin
from lorafleet.serve.errors import GatewayError, bad_request
from lorafleet.serve.proxy import GatewayState
from lorafleet.serve.replicas import Replica

router = APIRouter(prefix="/admin", tags=["admin"])


class KeyRequest(BaseModel):
    """A key to create (the same choices as `lorafleet keys create`)."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(description="the tenant the key belongs to")
    aliases: list[str] | None = Field(None, description="aliases the key may use; null = every alias")
    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="tokens per minute")
    max_concurrency: int | None = Field(None, ge=1, description="requests in flight at once")
    admin: bool = Field(False, description="may call the admin routes")


class AliasRequest(BaseModel):
    """An alias's new routing."""

    model_config = ConfigDict(extra="forbid")

    targets: list[str] = Field(description="NAME@vN or NAME@vN=WEIGHT entries, weights summing to 100")
    fallback_prompt: str | None = Field(None, description="system prompt the base model answers with when the adapter cannot load")


class VersionRequest(BaseModel):
    """A version to load into, or evict from, one replica."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="NAME@vN, a version in the registry")


async def _parsed(request: Request, model: type[BaseModel]) -> BaseModel:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(map(str, first["loc"])) or None
        raise bad_request(f"{param or 'body'}: {first['msg']}", param) from None


def _registry_error(exc: RegistryError) -> GatewayError:
    if isinstance(exc, NotFound):
        return GatewayError(404, str(exc), "invalid_request_error", code="not_found")
    return bad_request(str(exc))


@router.get("/keys")
async def list_keys(_: Principal = Depends(require_admin)) -> JSONResponse:
    keys = await asyncio.to_thread(registry_keys.list_keys)
    return JSONResponse({"object": "list", "data": [k.public() for k in keys]})


@router.post("/keys", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": KeyRequest.model_json_schema()}}}})
async def create_key(request: Request, _: Principal = Depends(require_admin)) -> JSONResponse:
    wanted = await _parsed(request, KeyRequest)
    try:
        key, token = await asyncio.to_thread(registry_keys.create_key, **wanted.model_dump())
    except RegistryError as exc:
        raise _registry_error(exc) from None
    return JSONResponse({**key.public(), "key": token}, status_code=201)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: str, _: Principal = Depends(require_admin)) -> JSONResponse:
    try:
        key = await asyncio.to_thread(registry_keys.revoke_key, key_id)
    except RegistryError as exc:
        raise _registry_error(exc) from None
    return JSONResponse(key.public())


@router.put("/aliases/{alias}", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": AliasRequest.model_json_schema()}}}})
async def set_alias(alias: str, request: Request, _: Principal = Depends(require_admin)) -> JSONResponse:
    wanted = await _parsed(request, AliasRequest)
    try:
        revision = await asyncio.to_thread(service.set_alias, alias, wanted.targets, wanted.fallback_prompt)
    except RegistryError as exc:
        raise _registry_error(exc) from None
    return JSONResponse(service.to_jsonable(revision))


@router.get("/replicas")
async def replicas(request: Request, _: Principal = Depends(require_admin)) -> JSONResponse:
    state = request.app.state.gateway
    data = [{"name": r.name, "healthy": r.healthy, "resident": sorted(r.resident), "in_flight": sum(r.busy.values()),
             "open_breakers": state.breakers.open_keys(r.name)} for r in state.pool.replicas.values()]
    return JSONResponse({"object": "list", "data": data, "draining": state.draining})


def _replica_and_version(request: Request, replica_name: str, ref: str) -> tuple[GatewayState, Replica, ServedVersion]:
    state: GatewayState = request.app.state.gateway
    replica = state.pool.replicas.get(replica_name)
    if replica is None:
        raise GatewayError(404, f"no replica named {replica_name!r} (GET /admin/replicas lists them)", "invalid_request_error",
                           code="not_found")
    version = state.fleet.versions.get(ref)
    if version is None:
        raise GatewayError(404, f"no version {ref!r} in the registry", "invalid_request_error", param="version", code="not_found")
    return state, replica, version


@router.post("/replicas/{replica_name}/load", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": VersionRequest.model_json_schema()}}}})
async def load_version(replica_name: str, request: Request, _: Principal = Depends(require_admin)) -> JSONResponse:
    wanted = await _parsed(request, VersionRequest)
    state, replica, version = _replica_and_version(request, replica_name, wanted.version)
    if not replica.healthy:
        raise GatewayError(503, f"replica {replica_name!r} is down", "service_unavailable", code="replica_down")
    loaded = await state.pool.ensure_loaded(replica, version)
    if not loaded.ok:
        raise GatewayError(502, f"{version.ref} did not load on {replica_name}: {loaded.reason}", "engine_error",
                           param="version", code="adapter_load_failed")
    return JSONResponse({"replica": replica_name, "version": version.ref, "resident": sorted(replica.resident)})


@router.post("/replicas/{replica_name}/unload", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": VersionRequest.model_json_schema()}}}})
async def unload_version(replica_name: str, request: Request, _: Principal = Depends(require_admin)) -> JSONResponse:
    wanted = await _parsed(request, VersionRequest)
    state, replica, version = _replica_and_version(request, replica_name, wanted.version)
    if version.ref in replica.resident:
        await state.pool.unload(replica, version.ref, "an admin evicted it")
    return JSONResponse({"replica": replica_name, "version": version.ref, "resident": sorted(replica.resident)})
