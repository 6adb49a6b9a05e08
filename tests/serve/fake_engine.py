"""A FAKE engine, for the two faults a real vLLM cannot be made to produce on demand: a 500 answer to a
completion request, and a stream that breaks after its first event. It speaks just enough of vLLM's
OpenAI API (health, models, chat completions) for the gateway to route to it; nothing else uses it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

BASE = "smollm2-135m-instruct"


def fake_engine_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": BASE, "object": "model", "parent": None}]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request):  # type: ignore[no-untyped-def]
        body = await request.json()
        if body.get("user") == "fail":
            message = "Worker failed: cannot read /srv/models/secret/weights.bin\nTraceback (most recent call last):\n  File \"/x.py\""
            return JSONResponse({"error": {"message": message, "type": "InternalServerError", "param": None, "code": 500}}, status_code=500)
        if body.get("stream"):
            return StreamingResponse(_breaking_stream(), media_type="text/event-stream")
        return JSONResponse({"id": "x", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    return app


async def _breaking_stream() -> AsyncIterator[bytes]:
    chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "half"}}]}
    yield f"data: {json.dumps(chunk)}\n\n".encode()
    await asyncio.sleep(0.05)
    raise RuntimeError("the fake engine breaks the stream here")


@contextmanager
def serve_in_thread(app: FastAPI, port: int) -> Iterator[str]:
    """Run `app` with uvicorn on 127.0.0.1:`port` in a thread; yields its URL, stops it on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
