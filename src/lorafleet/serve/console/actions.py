"""The console's data and action endpoints (`/ui/api/...`): JSON in, JSON (or a stream) out.

Alias changes call the registry's service functions — the ones `lorafleet adapters alias set /
promote / rollback` call — so every change is a revision in `lorafleet adapters history`, and then
re-read the fleet so this gateway routes by it at once (others within their `registry_poll_s`).
The playground sends its prompt through the gateway's own resolve → dispatch path, so it is
routed, loaded, metered and logged exactly as a `/v1` request for the same model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from lorafleet.registry import service
from lorafleet.registry.errors import NotFound, RegistryError
from lorafleet.serve.console import access, live, views
from lorafleet.serve.console.pages import logout_response
from lorafleet.serve.console.state import SECURITY_HEADERS, api_session, console, gateway
from lorafleet.serve.errors import GatewayError, bad_request, draining
from lorafleet.serve.proxy import dispatch, finish, open_record, route
from lorafleet.serve.routing import served_models

log = logging.getLogger("lorafleet.serve.console")
MAX_ACTION_BODY = 64 << 10
PLAYGROUND_MAX_TOKENS = 512


def action_router(refresh) -> APIRouter:  # type: ignore[no-untyped-def]
    """`refresh(state)` re-reads the registry into the gateway's fleet view (gateway.refresh_fleet)."""
    router = APIRouter(include_in_schema=False)  # a browser UI, not part of the gateway's API schema

    @router.post("/ui/logout")
    async def logout(request: Request) -> Response:
        api_session(request, changes_state=True)
        return logout_response(request)

    @router.get("/ui/api/metrics")
    async def metrics(request: Request) -> Response:
        api_session(request, changes_state=False)
        state = gateway(request)
        canaries = [name for name, alias in sorted(state.fleet.aliases.items()) if len(alias.routes) > 1]
        tail = console(request).request_log(state.request_log.path)
        # in a worker thread, reading and summarizing alike: the event loop keeps serving /v1 meanwhile
        view = await asyncio.to_thread(lambda: live.live_view(tail.read(), time.time(), canaries))
        return JSONResponse(service.to_jsonable(view), headers=SECURITY_HEADERS)

    @router.post("/ui/api/aliases/{alias}/weights")
    async def set_weights(request: Request, alias: str) -> Response:
        api_session(request, changes_state=True)
        body = await json_body(request)
        rows = body.get("weights")
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r) for r in rows):
            raise bad_request("'weights' must be a list of [version, weight] pairs of strings.", "weights")
        try:
            targets = views.routing_targets([(ref, weight) for ref, weight in rows])
        except RegistryError as exc:
            raise bad_request(str(exc), "weights") from None
        return await change(request, refresh, alias, "set", service.set_alias, alias, targets)

    @router.post("/ui/api/aliases/{alias}/promote")
    async def promote(request: Request, alias: str) -> Response:
        api_session(request, changes_state=True)
        ref = (await json_body(request)).get("version")
        if not isinstance(ref, str):
            raise bad_request("'version' (NAME@vN) is required.", "version")
        return await change(request, refresh, alias, "promote", service.promote, alias, ref)

    @router.post("/ui/api/aliases/{alias}/rollback")
    async def rollback(request: Request, alias: str) -> Response:
        api_session(request, changes_state=True)
        return await change(request, refresh, alias, "rollback", service.rollback, alias)

    @router.post("/ui/api/playground")
    async def playground(request: Request) -> Response:
        session = api_session(request, changes_state=True)
        return await ask(request, await json_body(request), access.tenant_of(gateway(request), session.subject))

    return router


async def json_body(request: Request) -> dict:
    raw = await request.body()
    if len(raw) > MAX_ACTION_BODY:
        raise bad_request(f"The request body is over {MAX_ACTION_BODY} bytes.")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


async def change(request: Request, refresh, alias: str, action: str, call, *args) -> Response:  # type: ignore[no-untyped-def]
    """Run one registry change; its refusal becomes a 400 (404 for an unknown version or alias) naming the problem."""
    state = gateway(request)
    try:
        revision = await asyncio.to_thread(call, *args)
    except NotFound as exc:
        raise GatewayError(404, str(exc), "invalid_request_error", code="not_found") from None
    except RegistryError as exc:
        raise bad_request(str(exc)) from None
    log.info("console: %s %s → revision %d (%s)", action, alias, revision.revision,
             " ".join(f"{r.ref}={r.weight}" for r in revision.routes))
    await refresh(state)
    return JSONResponse(service.to_jsonable(revision), headers=SECURITY_HEADERS)


async def ask(request: Request, body: dict, tenant: str) -> Response:
    """One playground prompt to one model, streamed back as the gateway streams `/v1/chat/completions`.

    Logged under the admin key's tenant; the tenants' rate limits and the fleet's capacity check do not apply
    (an admin may see every alias, and one person's two prompts are not traffic)."""
    state = gateway(request)
    if state.draining:
        raise draining()
    model, prompt, max_tokens = body.get("model"), body.get("prompt"), body.get("max_tokens", 128)
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required.", "model")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad_request("'prompt' must be a non-empty string.", "prompt")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= PLAYGROUND_MAX_TOKENS:
        raise bad_request(f"'max_tokens' must be an integer from 1 to {PLAYGROUND_MAX_TOKENS}.", "max_tokens")
    chat = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    record, headers = open_record(state, "chat.completions", tenant, stream=True)
    target = route(state, model, record, None, True, lambda: served_models(state.fleet, state.base_name))
    if target.canary:
        state.metrics.canary_picks.labels(alias=target.alias, version=target.key).inc()
    try:
        return await dispatch(state, target, chat, "chat.completions", record, started, headers)
    except GatewayError as error:  # recorded like a failed /v1 request, then answered by the app's handler
        record.status, record.error = error.status, error.message
        finish(state, record, started)
        raise
