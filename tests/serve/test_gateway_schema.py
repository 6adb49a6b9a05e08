"""Schemathesis against the gateway's own OpenAPI schema (`/openapi.json`), over loopback, on real engines: a bounded
number of generated requests per operation and mode (valid and invalid). No answer may be a 5xx, every 4xx must be
in OpenAI's error shape, and no answer may carry a stack trace or a file path of the host.

(Operations are driven with Hypothesis directly rather than through schemathesis' pytest plugin, whose lazy
fixture loading does not run on this pytest.)"""

from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from serve_fleet import Attached, Fleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
MAX_EXAMPLES = 25  # per operation and mode; generation is capped at 8 tokens, so the run costs a minute or two on 2 cores
HOST_PATH = re.compile(r"(/home/|/root/|/tmp/|/usr/|/opt/|site-packages|\.py\b)")


def bounded(case):  # type: ignore[no-untyped-def]
    """A completion request asks for at most 8 tokens (the engine's default fills the context): the run tests the
    gateway, not the engine's speed."""
    body = case.body
    if isinstance(body, dict) and ("messages" in body or "prompt" in body):
        tokens = body.get("max_tokens")
        if tokens is None or (isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 8):
            body["max_tokens"] = 8
    return case


def test_gateway_answers_every_generated_request_well(fleet: Fleet, guarded: Attached, keys: dict) -> None:
    schema = schemathesis.openapi.from_url(f"{guarded.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /v1/chat/completions", "POST /v1/completions",
                                                                      "GET /v1/models", "POST /admin/keys"}
    seen: dict[int, int] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode).map(bounded))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                      phases=[Phase.explicit, Phase.generate], derandomize=True, database=None)
            def check(case) -> None:  # type: ignore[no-untyped-def]
                response = case.call(base_url=guarded.url, headers=keys["admin"], timeout=120)
                text = response.text
                where = (case.method, case.path, case.path_parameters, case.body, text[:400])
                seen[response.status_code] = seen.get(response.status_code, 0) + 1
                assert response.status_code < 500, where
                if 400 <= response.status_code < 500:
                    error = response.json()["error"]
                    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str), where
                assert "Traceback" not in text and str(fleet.home) not in text and not HOST_PATH.search(text), where

            try:
                check()
            except Unsatisfiable:  # an operation without parameters or body has no invalid request to make
                assert mode == GenerationMode.NEGATIVE
    print("schemathesis answers by status:", seen)
    assert seen.get(200, 0) > 0 and sum(n for status, n in seen.items() if 400 <= status < 500) > 0, seen
