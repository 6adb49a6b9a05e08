"""The console's per-app state and the checks every console route starts with.

Pages answer a missing or stale session with a redirect to the login form; data and action
endpoints answer it with an OpenAI-shaped 401, and a state-changing request without the session's
CSRF token with a 403. A bearer key in an Authorization header never opens the console: only the
session cookie that the login form sets with an admin key does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from lorafleet.serve.console import access
from lorafleet.serve.console.live import LogTail
from lorafleet.serve.console.session import CSRF_HEADER, SESSION_COOKIE, SESSION_TTL_S, Session, SessionSigner
from lorafleet.serve.errors import GatewayError
from lorafleet.serve.proxy import GatewayState

STATIC_DIR = Path(__file__).parent / "static"
# The console's pages load only their own scripts, styles and data, and are never framed (clickjacking).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class ConsoleState:
    """One per gateway app: the session signer, the template environment and the request log's reader."""

    signer: SessionSigner
    templates: Environment
    log_tail: LogTail | None = None  # made on first use: the request log's path is known once the gateway runs

    @classmethod
    def create(cls) -> ConsoleState:
        env = Environment(loader=PackageLoader("lorafleet.serve.console", "templates"), autoescape=select_autoescape(["html"]))
        return cls(SessionSigner.fresh(), env)

    def request_log(self, path: Path) -> LogTail:
        if self.log_tail is None or self.log_tail.path != path:
            self.log_tail = LogTail(path)
        return self.log_tail


class NeedsLogin(Exception):
    """A page request without a usable session: answered with a redirect to the login form."""


def gateway(request: Request) -> GatewayState:
    return request.app.state.gateway


def console(request: Request) -> ConsoleState:
    return request.app.state.console


def current_session(request: Request) -> Session | None:
    """The request's verified session, if its cookie is valid and its subject may still use the console."""
    session = console(request).signer.read(request.cookies.get(SESSION_COOKIE), time.time())
    if session is None or not access.subject_valid(gateway(request), session.subject):
        return None
    return session


def page_session(request: Request) -> Session:
    """The session of a page request; raises NeedsLogin."""
    session = current_session(request)
    if session is None:
        raise NeedsLogin()
    return session


def api_session(request: Request, changes_state: bool) -> Session:
    """The session of a data or action request; raises GatewayError 401 (no session) or 403 (no CSRF token)."""
    session = current_session(request)
    if session is None:
        raise GatewayError(401, "The console needs a session: log in at /ui/login with an admin key.", "invalid_request_error",
                           code="console_login_required")
    if changes_state and not console(request).signer.csrf_ok(session, request.headers.get(CSRF_HEADER)):
        raise GatewayError(403, f"Missing or wrong CSRF token: send the page's token in the {CSRF_HEADER} header.",
                           "invalid_request_error", code="csrf_failed")
    return session


def login_redirect() -> RedirectResponse:
    return RedirectResponse("/ui/login", status_code=303)


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_TTL_S, path="/ui", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/ui", httponly=True, samesite="strict")
