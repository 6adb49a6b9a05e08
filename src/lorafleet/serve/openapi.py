"""The request bodies the gateway documents in its OpenAPI schema (`/openapi.json`).

The completion routes read their bodies themselves (serve.clamps), so that every refusal is an
OpenAI-shaped 400 rather than FastAPI's 422; these schemas describe the same bodies for clients and
for the schemathesis run in CI. Only the parameters the gateway checks are listed; the rest pass to vLLM.
"""

from __future__ import annotations

from lorafleet.serve.clamps import ROLES

_COMMON = {
    "model": {"type": "string", "minLength": 1, "example": "greet", "description": "an alias, NAME@vN or the base model"},
    "max_tokens": {"type": "integer", "minimum": 1, "example": 4},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "n": {"type": "integer", "minimum": 1, "maximum": 8},
    "stop": {"oneOf": [{"type": "string", "maxLength": 256}, {"type": "array", "maxItems": 4, "items": {"type": "string", "maxLength": 256}}]},
    "stream": {"type": "boolean"},
    "seed": {"type": "integer"},
    "user": {"type": "string"},
}
CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        **_COMMON,
        "messages": {"type": "array", "minItems": 1, "maxItems": 512, "items": {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"type": "string", "enum": sorted(ROLES)}, "content": {"type": "string"}},
        }, "example": [{"role": "user", "content": "Hello"}]},
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
    },
}
COMPLETION_REQUEST = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        **_COMMON,
        "prompt": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": {"type": "string"}}],
                   "example": "Hello"},
        "logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
        "echo": {"type": "boolean"},
    },
}


def request_body(schema: dict) -> dict:
    """`openapi_extra` for a route whose JSON body is `schema`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
