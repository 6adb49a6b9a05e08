"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right HTTP status.

Messages that come from an engine are cleaned before they reach a client: file paths become
`<path>` and anything after a traceback marker is cut, so no response reveals the host's layout.
"""

from __future__ import annotations

import json
import re

from fastapi.responses import JSONResponse

_PATH = re.compile(r"(?<![\w:/])(?:/[^\s/'\"`,;:()]+){2,}/?")
_TRACEBACK_MARKERS = ("Traceback (most recent call last)", "\n  File ")
MAX_MESSAGE = 500


class GatewayError(Exception):
    """A request the gateway answers with an error; carries its status and OpenAI error fields."""

    def __init__(self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.retry_after = retry_after  # seconds, sent as Retry-After (429, 503)

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        headers = dict(headers or {})
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), status_code=self.status, headers=headers)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", param)


def model_not_found(model: str, served: list[str]) -> GatewayError:
    listing = ", ".join(served[:20]) + (" …" if len(served) > 20 else "")
    return GatewayError(404, f"The model {model!r} does not exist. Served models: {listing}.", "invalid_request_error", "model", "model_not_found")


def engine_unavailable(detail: str) -> GatewayError:
    return GatewayError(503, f"No engine replica is available: {detail}. Retry later.", "service_unavailable", code="engine_unavailable",
                        retry_after=2)


def draining() -> GatewayError:
    return GatewayError(503, "The gateway is shutting down. Retry on another gateway or later.", "service_unavailable",
                        code="draining", retry_after=5)


def engine_failed(detail: str) -> GatewayError:
    return GatewayError(502, f"The engine failed to answer: {clean_message(detail)}", "engine_error", code="engine_error")


def clean_message(message: str) -> str:
    """An engine's message without file paths or tracebacks, at most MAX_MESSAGE characters."""
    for marker in _TRACEBACK_MARKERS:
        message = message.split(marker, 1)[0]
    message = _PATH.sub("<path>", message).strip()
    return message[:MAX_MESSAGE] + ("…" if len(message) > MAX_MESSAGE else "")


def from_engine(status: int, content: bytes) -> GatewayError:
    """An engine's error response as the gateway's: its 4xx stays a client error (same status, cleaned
    message), anything else becomes 502."""
    try:
        error = json.loads(content)["error"]
        message, type_, param = str(error.get("message", "")), str(error.get("type", "")), error.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        message, type_, param = content.decode("utf-8", "replace"), "", None
    if 400 <= status < 500 and status not in (401, 403):  # the engine's own auth failing is our fault, not the client's
        return GatewayError(status, clean_message(message), "invalid_request_error" if status == 400 else type_ or "invalid_request_error",
                            param if isinstance(param, str) else None)
    return engine_failed(f"HTTP {status}: {message}")
