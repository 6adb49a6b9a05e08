"""The FastAPI gateway: the OpenAI routes it means to serve, health, metrics — and nothing else.

The engines' own admin routes (`/v1/load_lora_adapter`, `/adapters`, …) are never forwarded: only
the routes below exist (and the web console under `/ui`, serve/console), and every other path is an
OpenAI-shaped 404. Two background tasks run beside the requests: the registry poll (alias changes
live within `registry_poll_s`) and the replica supervisor (health checks; restarts of spawned
replicas with backoff).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from lorafleet.registry.fleet import FleetView, read_fleet
from lorafleet.registry.keys import KeySnapshot, read_key_snapshot
from lorafleet.serve import admin, console
from lorafleet.serve.auth import AuthState, Principal, require_admin, require_key, visible_models
from lorafleet.serve.breaker import Breakers
from lorafleet.serve.config import FleetConfig
from lorafleet.serve.engine import EngineManager
from lorafleet.serve.engine_metrics import scrape_engines
from lorafleet.serve.errors import GatewayError, error_body
from lorafleet.serve.metrics import GatewayMetrics
from lorafleet.serve.openapi import CHAT_REQUEST, COMPLETION_REQUEST, request_body
from lorafleet.serve.proxy import GatewayState, handle
from lorafleet.serve.replicas import ReplicaPool
from lorafleet.serve.requestlog import RequestLog

log = logging.getLogger("lorafleet.serve.gateway")
FleetReader = Callable[[], FleetView]
KeyReader = Callable[[], KeySnapshot]


def create_app(config: FleetConfig, base_name: str, capacity: int, log_path: Path,
               manager: EngineManager | None = None, fleet_reader: FleetReader = read_fleet,
               key_reader: KeyReader = read_key_snapshot) -> FastAPI:
    """The gateway app. With `manager` it starts, supervises and stops those replicas; otherwise it
    attaches to `config.engines`. `capacity` is how many adapters a replica keeps loaded."""
    metrics = GatewayMetrics()

    async def metrics_access(request: Request) -> None:
        if config.metrics_require_admin:
            await require_admin(request)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # aiohttp rather than httpx: its connection pool costs a fraction per request (measured, BENCHMARKS.md row 3)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None, connect=5.0)) as client:
            pool = ReplicaPool(client, metrics, capacity, config.load_timeout_s, config.fallback_cooldown_s)
            state = GatewayState(config, pool, metrics, RequestLog(log_path), base_name, FleetView(None, {}, {}), AuthState(config.auth),
                                 Breakers(config.breaker.failures, config.breaker.cooldown_s))
            app.state.gateway = state
            await refresh_fleet(state, fleet_reader, key_reader)
            announce_auth(state.auth)
            if manager is not None:
                manager.start_all()  # here, in the event loop's thread, which lives as long as the replicas
                for process in manager.replicas:
                    pool.add(process.name, process.url, process.api_key)
            for engine in config.engines:
                pool.add(engine.url, engine.url, engine.api_key)
            tasks = [asyncio.create_task(poll_registry(state, fleet_reader, key_reader)), asyncio.create_task(supervise(state, manager))]
            log.info("gateway up: %d replica(s), %d alias(es); request log %s", len(pool.replicas), len(state.fleet.aliases), log_path)
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if manager is not None:
                    manager.stop_all()
                state.request_log.close()

    app = FastAPI(title="lorafleet gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.include_router(admin.router)

    # `arrived_draining` comes first: whether the request arrived after SIGTERM, not after its key was checked
    @app.post("/v1/chat/completions", openapi_extra=request_body(CHAT_REQUEST))
    async def chat_completions(request: Request, late: bool = Depends(arrived_draining),
                               principal: Principal = Depends(require_key)) -> Response:
        return await handle(request.app.state.gateway, request, "chat.completions", principal, late)

    @app.post("/v1/completions", openapi_extra=request_body(COMPLETION_REQUEST))
    async def completions(request: Request, late: bool = Depends(arrived_draining),
                          principal: Principal = Depends(require_key)) -> Response:
        return await handle(request.app.state.gateway, request, "completions", principal, late)

    @app.get("/v1/models")
    async def models(request: Request, principal: Principal = Depends(require_key)) -> JSONResponse:
        state: GatewayState = request.app.state.gateway
        created = int(state.fleet.base.created_at.timestamp()) if state.fleet.base else 0
        data = [{"id": name, "object": "model", "created": created, "owned_by": "lorafleet"}
                for name in visible_models(principal, state.fleet, state.base_name)]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/health/live")
    async def live() -> JSONResponse:
        return JSONResponse({"status": "live"})

    @app.get("/health/ready")
    async def ready(request: Request) -> JSONResponse:
        state: GatewayState = request.app.state.gateway
        healthy = state.pool.healthy_names()
        body = {"replicas_healthy": len(healthy), "replicas": len(state.pool.replicas), "registry": state.fleet_read_ok,
                "draining": state.draining}
        ok = bool(healthy) and state.fleet_read_ok and not state.draining
        return JSONResponse({"status": "ready" if ok else "not ready", **body}, status_code=200 if ok else 503)

    @app.get("/metrics", dependencies=[Depends(metrics_access)])
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/metrics/engines", dependencies=[Depends(metrics_access)])
    async def engine_metrics(request: Request) -> Response:
        return Response(await scrape_engines(request.app.state.gateway.pool), media_type=CONTENT_TYPE_LATEST)

    console.install(app, lambda state: refresh_fleet(state, fleet_reader, key_reader))

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(error_body(f"{param or 'request'}: {first.get('msg', 'invalid')}", "invalid_request_error", param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            body = error_body(f"Unknown route {request.method} {request.url.path}.", "invalid_request_error", code="not_found")
        else:
            body = error_body(str(exc.detail), "invalid_request_error")
        return JSONResponse(body, status_code=exc.status_code)

    return app


async def arrived_draining(request: Request) -> bool:
    return request.app.state.gateway.draining


def announce_auth(auth: AuthState) -> None:
    if auth.mode == "none":
        log.warning("--auth none: every request is served without an API key and every caller is an admin; "
                    "use this only on loopback, for a demo")
    elif not auth.required:
        log.warning("the registry holds no API key: requests are served without one until `lorafleet keys create` makes the first")
    else:
        log.info("API keys required: %d usable key(s) in the registry", len(auth.snapshot.keys))


async def refresh_fleet(state: GatewayState, reader: FleetReader, key_reader: KeyReader) -> None:
    """Swap in a fresh registry view and key snapshot; on failure keep the last good ones (and count the failure)."""
    try:
        state.fleet = await asyncio.to_thread(reader)
        state.auth.update(await asyncio.to_thread(key_reader))
        state.fleet_read_ok = True
    except (SQLAlchemyError, OSError, ValueError) as exc:
        state.metrics.registry_read_failures.inc()
        log.warning("reading the registry failed (%s); routing and keys stay as last read", exc)


async def poll_registry(state: GatewayState, reader: FleetReader, key_reader: KeyReader) -> None:
    while True:
        await asyncio.sleep(state.config.registry_poll_s)
        await refresh_fleet(state, reader, key_reader)
        state.request_log.flush()


async def supervise(state: GatewayState, manager: EngineManager | None) -> None:
    """Health-check every replica; restart crashed spawned ones (backoff) and those that never came up."""
    pool = state.pool
    while True:
        if manager is not None:
            for process in manager.poll(time.monotonic(), state.config.startup_timeout_s):
                pool.set_endpoint(process.name, process.url, process.api_key)
            for process in manager.replicas:
                if not process.running:
                    pool.mark_down(pool.replicas[process.name], "process exited")
        replicas = list(pool.replicas.values())
        results = await asyncio.gather(*(pool.check(r) for r in replicas))
        if manager is not None:
            for replica, up in zip(replicas, results):
                if up:
                    manager.mark_healthy(replica.name)
        await asyncio.sleep(state.config.health_interval_s)
