"""The web console the gateway serves at `/ui`: fleet, adapters, aliases, live metrics and a playground.

`install` adds its routes to a gateway app; everything it needs (templates, the vendored uPlot
charting library with its licence, the console's script and styles) ships inside this package.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from lorafleet.serve.console.actions import action_router
from lorafleet.serve.console.pages import needs_login_handler, page_router
from lorafleet.serve.console.state import STATIC_DIR, ConsoleState, NeedsLogin
from lorafleet.serve.proxy import GatewayState


def install(app: FastAPI, refresh: Callable[[GatewayState], Awaitable[None]]) -> None:
    """Serve the console on `app`; `refresh(state)` re-reads the registry after an alias change."""
    app.state.console = ConsoleState.create()
    app.include_router(page_router())
    app.include_router(action_router(refresh))
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    app.add_exception_handler(NeedsLogin, needs_login_handler)  # type: ignore[arg-type]
