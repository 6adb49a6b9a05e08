"""Pure parts of the gateway: error shaping and cleaning, SSE re-cutting, fallback messages, restart backoff."""

from __future__ import annotations

import asyncio
import json

import pytest

from lorafleet.serve.engine import restart_delay
from lorafleet.serve.errors import clean_message, from_engine
from lorafleet.serve.proxy import parse_body
from lorafleet.serve.errors import GatewayError
from lorafleet.serve.routing import fallback_messages
from lorafleet.serve.streaming import sse_events


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("No adapter found for /srv/lorafleet/store/abc123", "No adapter found for <path>"),
        ("cannot open '/home/u/.lorafleet/store/x/adapter_model.safetensors'.", "cannot open '<path>'."),
        ("bad value (parameter=max_tokens, value=-5)", "bad value (parameter=max_tokens, value=-5)"),
        ("see https://docs.vllm.ai/en/latest/x for details", "see https://docs.vllm.ai/en/latest/x for details"),
        ("boom\nTraceback (most recent call last):\n  File \"/x/y.py\", line 1", "boom"),
        ("a" * 600, "a" * 500 + "…"),
    ],
)
def test_clean_message(message: str, expected: str) -> None:
    assert clean_message(message) == expected


@pytest.mark.parametrize(
    ("status", "content", "expected_status", "expected_type", "says"),
    [
        (400, b'{"error":{"message":"max_tokens must be at least 1","type":"BadRequestError","param":"max_tokens"}}',
         400, "invalid_request_error", "max_tokens must be at least 1"),
        (404, b'{"error":{"message":"The model `x` does not exist.","type":"NotFoundError"}}', 404, "NotFoundError", "does not exist"),
        (500, b'{"error":{"message":"Worker failed at /opt/vllm/x.py","type":"InternalServerError"}}', 502, "engine_error", "<path>"),
        (401, b'{"error":"Unauthorized"}', 502, "engine_error", "HTTP 401"),
        (503, b"<html>bad gateway</html>", 502, "engine_error", "HTTP 503"),
    ],
)
def test_engine_errors_become_gateway_errors(status, content, expected_status, expected_type, says) -> None:
    error = from_engine(status, content)
    assert (error.status, error.type) == (expected_status, expected_type)
    assert says in error.message and "/opt/" not in error.message


@pytest.mark.parametrize(
    ("raw", "endpoint", "param"),
    [
        (b"{", "chat.completions", None),
        (b"[]", "chat.completions", None),
        (b'{"messages": []}', "chat.completions", "model"),
        (b'{"model": "m", "messages": []}', "chat.completions", "messages"),
        (b'{"model": "m", "messages": "hi"}', "chat.completions", "messages"),
        (b'{"model": "m"}', "completions", "prompt"),
        (b'{"model": "m", "prompt": "x", "stream": 1}', "completions", "stream"),
        (b"\xff\xfe", "completions", None),
    ],
)
def test_parse_body_refuses_what_routing_cannot_use(raw: bytes, endpoint, param) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_body(raw, endpoint)
    assert caught.value.status == 400 and caught.value.param == param


def test_parse_body_passes_everything_else_through() -> None:
    body = parse_body(b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_k": 3, "seed": 1}', "chat.completions")
    assert body["top_k"] == 3 and body["seed"] == 1


@pytest.mark.parametrize(
    ("messages", "prompt", "expected"),
    [
        ([{"role": "user", "content": "q"}], "P", [{"role": "system", "content": "P"}, {"role": "user", "content": "q"}]),
        ([{"role": "system", "content": "S"}, {"role": "developer", "content": "D"}, {"role": "user", "content": "q"},
          {"role": "assistant", "content": "a"}, {"role": "system", "content": "S2"}, {"role": "user", "content": "q2"}],
         "P", [{"role": "system", "content": "P"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
               {"role": "user", "content": "q2"}]),
        ([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], None,
         [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]),  # no fallback prompt: unchanged
    ],
)
def test_fallback_messages(messages, prompt, expected) -> None:
    assert fallback_messages(messages, prompt) == expected


@pytest.mark.parametrize(
    ("chunks", "events"),
    [
        ([b"data: 1\n\ndata: 2\n\n"], [b"data: 1\n\n", b"data: 2\n\n"]),
        ([b"data: 1", b"\n", b"\ndata: [DONE]\n\n"], [b"data: 1\n\n", b"data: [DONE]\n\n"]),
        ([b"data: {\"a\":", b" 1}\n\nda", b"ta: 2\n\n"], [b'data: {"a": 1}\n\n', b"data: 2\n\n"]),
        ([b"data: tail-without-blank-line\n"], [b"data: tail-without-blank-line\n\n\n"]),
        ([], []),
    ],
)
def test_sse_events_recut_whole_events(chunks: list[bytes], events: list[bytes]) -> None:
    async def collect() -> list[bytes]:
        async def source():
            for chunk in chunks:
                yield chunk
        return [e async for e in sse_events(source())]

    assert asyncio.run(collect()) == events


@pytest.mark.parametrize(("crashes", "expected"), [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (50, 60.0)])
def test_restart_backoff(crashes: int, expected: float) -> None:
    assert restart_delay(crashes, base_s=1.0, max_s=60.0) == expected


def test_error_body_shape() -> None:
    response = GatewayError(404, "m", "invalid_request_error", "model", "model_not_found").response()
    assert response.status_code == 404
    assert json.loads(response.body) == {"error": {"message": "m", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}


@pytest.mark.parametrize(
    ("prompt", "requested", "limit", "expected"),
    [
        (100, None, 128, 28),  # no max_tokens: whatever the adapter's length leaves
        (100, 20, 128, 20),
        (100, 28, 128, 28),
        (100, 29, 128, "you requested 129 tokens"),
        (128, None, 128, "your prompt has 128 tokens"),
        (500, 1, 128, "maximum context length is 128 tokens"),
    ],
)
def test_completion_budget_within_the_adapters_training_length(prompt, requested, limit, expected) -> None:
    from lorafleet.serve.limits import completion_budget

    if isinstance(expected, int):
        assert completion_budget(prompt, requested, limit, "support@v2") == expected
    else:
        with pytest.raises(GatewayError) as caught:
            completion_budget(prompt, requested, limit, "support@v2")
        assert caught.value.status == 400 and expected in caught.value.message and "support@v2" in caught.value.message
