"""The console's pages (`GET /ui/...`) and its login: server-rendered Jinja2, a little JavaScript on top.

Each page handler is: check the session → read what the page shows (gateway state, registry via the
same service functions as the CLI) → render. Registry reads run in a worker thread, as the gateway's
own registry poll does, so a slow database never stalls `/v1` traffic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from lorafleet.registry import service
from lorafleet.registry.errors import RegistryError
from lorafleet.serve.console import access, views
from lorafleet.serve.console.session import OPEN_SUBJECT, Session
from lorafleet.serve.console.state import (
    SECURITY_HEADERS, NeedsLogin, clear_session_cookie, console, current_session, gateway, login_redirect, page_session,
    set_session_cookie,
)
from lorafleet.serve.engine_metrics import scrape_engines

log = logging.getLogger("lorafleet.serve.console")
MAX_LOGIN_BODY = 4096  # a login form is one key; anything larger is not one


def render(request: Request, template: str, session: Session | None, status: int = 200, **context: object) -> HTMLResponse:
    state = gateway(request)
    html = console(request).templates.get_template(template).render(
        page=template.removesuffix(".html"), auth_on=access.auth_enabled(state), auth_mode=state.auth.mode, base_name=state.base_name,
        csrf=console(request).signer.csrf_token(session) if session else "", logged_in=session is not None, **context,
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def page_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)  # a browser UI, not part of the gateway's API schema

    @router.get("/ui")
    async def home(request: Request) -> Response:
        return RedirectResponse("/ui/fleet", status_code=303)

    @router.get("/ui/login")
    async def login_form(request: Request) -> Response:
        state = gateway(request)
        if current_session(request) is not None:
            return RedirectResponse("/ui/fleet", status_code=303)
        if not access.auth_enabled(state):  # no keys to ask for: open a session (it carries the CSRF token)
            response = RedirectResponse("/ui/fleet", status_code=303)
            set_session_cookie(request, response, console(request).signer.issue(OPEN_SUBJECT, time.time()))
            return response
        return render(request, "login.html", None)

    @router.post("/ui/login")
    async def login(request: Request) -> Response:
        state = gateway(request)
        body = await request.body()
        key = parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0].strip() if len(body) <= MAX_LOGIN_BODY else ""
        subject = await access.admin_subject(state, key) if key else None
        if subject is None:
            log.warning("console login refused from %s: not an admin key", request.client.host if request.client else "?")
            return render(request, "login.html", None, status=401, error="That is not an admin key. Tenant keys cannot open the console.")
        log.info("console login from %s as %s", request.client.host if request.client else "?", subject)
        response = RedirectResponse("/ui/fleet", status_code=303)
        set_session_cookie(request, response, console(request).signer.issue(subject, time.time()))
        return response

    @router.get("/ui/fleet")
    async def fleet_page(request: Request) -> Response:
        session = page_session(request)
        return render(request, "fleet.html", session, **await fleet_context(request))

    @router.get("/ui/fragments/fleet")
    async def fleet_fragment(request: Request) -> Response:
        session = page_session(request)
        return render(request, "_fleet_tables.html", session, **await fleet_context(request))

    @router.get("/ui/adapters")
    async def adapters_page(request: Request) -> Response:
        session = page_session(request)
        rows = await asyncio.to_thread(service.list_adapters)
        return render(request, "adapters.html", session, rows=rows)

    @router.get("/ui/adapters/{ref}")
    async def adapter_page(request: Request, ref: str) -> Response:
        session = page_session(request)
        try:
            detail = await asyncio.to_thread(service.show, ref)
        except RegistryError as exc:
            return render(request, "adapters.html", session, status=404, rows=await asyncio.to_thread(service.list_adapters), error=str(exc))
        curves = views.loss_curves([m for m in detail.metrics if "unreadable" not in m])
        unreadable = sum(1 for m in detail.metrics if "unreadable" in m) + curves.unreadable
        return render(request, "adapter.html", session, detail=detail, facts=views.manifest_facts(detail.manifest),
                      curves_json=json.dumps(vars(curves)).replace("<", "\\u003c"), curves=curves, unreadable=unreadable,
                      evals=views.eval_rows(detail.evals))

    @router.get("/ui/aliases")
    async def aliases_page(request: Request) -> Response:
        session = page_session(request)
        fleet = gateway(request).fleet
        rows = views.alias_rows(fleet)
        histories = await asyncio.to_thread(lambda: {row.alias: service.history(row.alias) for row in rows})
        versions_by_name: dict[str, list[str]] = {}
        for ref in sorted(fleet.versions, key=lambda r: (fleet.versions[r].name, fleet.versions[r].version)):
            versions_by_name.setdefault(fleet.versions[ref].name, []).append(ref)
        return render(request, "aliases.html", session, rows=rows, histories=histories, versions_by_name=versions_by_name)

    @router.get("/ui/metrics")
    async def metrics_page(request: Request) -> Response:
        return render(request, "metrics.html", page_session(request))

    @router.get("/ui/playground")
    async def playground_page(request: Request) -> Response:
        state = gateway(request)
        choices = views.model_choices(state.fleet, state.base_name)
        return render(request, "playground.html", page_session(request), choices=choices)

    return router


async def fleet_context(request: Request) -> dict[str, object]:
    state = gateway(request)
    stats = views.engine_stats((await scrape_engines(state.pool)).decode())
    return {"replicas": views.replica_rows(state.pool.replicas.values(), stats), "aliases": views.alias_rows(state.fleet),
            "registry_ok": state.fleet_read_ok}


def needs_login_handler(request: Request, exc: NeedsLogin) -> Response:
    return login_redirect()


def logout_response(request: Request) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    clear_session_cookie(response)
    return response
