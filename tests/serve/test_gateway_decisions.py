"""The gateway's pure decisions as tables: request clamps, token buckets and admission, circuit breakers,
per-alias timeouts, the drain's end."""

from __future__ import annotations

import json

import pytest

from lorafleet.serve.auth import Principal
from lorafleet.serve.breaker import CLOSED, Breaker, Breakers, after, allows
from lorafleet.serve.clamps import RequestLimits, check_max_tokens, check_request, parse_request
from lorafleet.serve.config import FleetConfig, timeouts_for
from lorafleet.serve.drain import drain_over
from lorafleet.serve.errors import GatewayError
from lorafleet.serve.quotas import Bucket, Quotas, admit, fleet_full

LIMITS = RequestLimits()
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def refused(call, *args) -> GatewayError:  # type: ignore[no-untyped-def]
    with pytest.raises(GatewayError) as caught:
        call(*args)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(("raw", "says"), [
    (b"x" * (2**20 + 1), "larger than 1,048,576 bytes"),
    (b'{"model": "m\xff"}', "not valid UTF-8"),
    (b"[" * 40 + b"]" * 40, "nested"),
    (b'{"a": ' * 40 + b"1" + b"}" * 40, "nested"),
    (b"[" * 100000, "nested"),  # far past the interpreter's recursion limit: still a 400
    (b"{not json", "not valid JSON"),
    (b'"a string"', "must be a JSON object"),
    (b'{"model": NaN}', "NaN"),
])
def test_whole_body_clamps(raw: bytes, says: str) -> None:
    error = refused(parse_request, raw, LIMITS)
    assert says in error.message and error.param is None and error.type == "invalid_request_error"


def test_a_body_at_the_limits_passes() -> None:
    nested = {"model": "m", "messages": [{"role": "user", "content": "x" * (2**20 - 200)}]}
    assert parse_request(json.dumps(nested).encode(), LIMITS)["model"] == "m"


@pytest.mark.parametrize(("change", "param", "says"), [
    ({"model": None}, "model", "'model' is required"),
    ({"stream": "yes"}, "stream", "'stream' must be true or false, not a string"),
    ({"stream": 1}, "stream", "not an integer"),
    ({"max_tokens": "10"}, "max_tokens", "an integer"),
    ({"max_tokens": True}, "max_tokens", "not a boolean"),
    ({"max_tokens": 0}, "max_tokens", "at least 1"),
    ({"temperature": "hot"}, "temperature", "a number"),
    ({"n": 9}, "n", "between 1 and 8"),
    ({"n": 2**31}, "n", "between 1 and 8"),
    ({"n": 0}, "n", "between 1 and 8"),
    ({"best_of": 100}, "best_of", "between 1 and 8"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "5 sequences"),
    ({"stop": "x" * 257}, "stop", "257 characters"),
    ({"stop": [1]}, "stop", "hold strings"),
    ({"stop": 5}, "stop", "a string or an array"),
    ({"logprobs": 3}, "logprobs", "true or false"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
    ({"top_logprobs": -1}, "top_logprobs", "between 0 and 20"),
    ({"messages": []}, "messages", "non-empty"),
    ({"messages": [{"role": "user", "content": "x"}] * 513}, "messages", "513 messages"),
    ({"messages": ["hi"]}, "messages[0]", "must be an object"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "'wizard'"),
    ({"messages": [{"content": "x"}]}, "messages[0].role", "None"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "not an integer"),
    ({"user": 7}, "user", "a string"),
])
def test_chat_clamps_name_the_parameter(change: dict, param: str, says: str) -> None:
    error = refused(check_request, {**CHAT, **change}, "chat.completions", LIMITS)
    assert error.param == param and says in error.message


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m"}, "prompt"), ({"model": "m", "prompt": ""}, "prompt"), ({"model": "m", "prompt": 5}, "prompt"),
    ({"model": "m", "prompt": "x", "logprobs": 21}, "logprobs"), ({"model": "m", "prompt": "x", "logprobs": True}, "logprobs"),
    ({"model": "m", "prompt": "x", "echo": "yes"}, "echo"),
])
def test_completion_clamps(body: dict, param: str) -> None:
    assert refused(check_request, body, "completions", LIMITS).param == param


@pytest.mark.parametrize("body", [
    {**CHAT, "stream": True, "n": 8, "stop": ["a", "b", "c", "d"], "logprobs": True, "top_logprobs": 20, "max_tokens": 5,
     "temperature": 0, "top_p": 0.5, "seed": 3, "stream_options": {"include_usage": True}, "max_tokens_extra_unknown": 1},
    {**CHAT, "messages": [{"role": r, "content": None if r == "assistant" else [{"type": "text", "text": "x"}]} for r in
                          ("system", "developer", "user", "assistant", "tool", "function")]},
    {"model": "m", "prompt": [1, 2, 3], "logprobs": 0, "echo": True, "stop": "x" * 256},
])
def test_good_requests_pass(body: dict) -> None:
    check_request(body, "completions" if "prompt" in body else "chat.completions", LIMITS)


@pytest.mark.parametrize(("body", "context", "param"), [
    ({"max_tokens": 300}, 256, "max_tokens"), ({"max_completion_tokens": 257}, 256, "max_completion_tokens"),
    ({"max_tokens": 256}, 256, None), ({"max_tokens": 10**9}, None, None), ({}, 256, None),
])
def test_max_tokens_above_the_context(body: dict, context: int | None, param: str | None) -> None:
    if param is None:
        check_max_tokens(body, context, "greet")
    else:
        error = refused(check_max_tokens, body, context, "greet")
        assert error.param == param and f"{context}-token context of 'greet'" in error.message


LIMITED = Principal("t", "k", None, rpm=2, tpm=100, max_concurrency=1)


@pytest.mark.parametrize(("rpm_level", "tpm_level", "in_flight", "code", "retry_after"), [
    (2.0, 100.0, 0, None, None),
    (0.5, 100.0, 0, "rate_limit_exceeded", 15),  # half a request short at 2/min: 15 s
    (2.0, 0.0, 0, "rate_limit_exceeded", 1),
    (2.0, -50.0, 0, "rate_limit_exceeded", 31),  # 50 tokens in debt at 100/min: 30 s and a bit
    (2.0, 100.0, 1, "concurrency_limit_exceeded", 1),
])
def test_admission(rpm_level: float, tpm_level: float, in_flight: int, code: str | None, retry_after: int | None) -> None:
    outcome = admit(LIMITED, Bucket(2, 2 / 60, rpm_level, 0.0), Bucket(100, 100 / 60, tpm_level, 0.0), in_flight, now=0.0)
    if code is None:
        assert outcome.refusal is None and outcome.rpm.level == rpm_level - 1
    else:
        error = outcome.refusal
        assert error.status == 429 and error.type == "rate_limit_exceeded" and error.code == code
        assert error.retry_after == retry_after and error.response().headers["retry-after"] == str(retry_after)


def test_buckets_refill_and_charge_real_usage() -> None:
    quotas = Quotas()
    for now in (0.0, 0.1):
        quotas.start(LIMITED, now)
        quotas.end(LIMITED, 60, now)
    with pytest.raises(GatewayError) as caught:  # two requests spent the rpm; the tokens are 20 in debt
        quotas.start(LIMITED, 0.2)
    assert caught.value.status == 429 and quotas.total_in_flight == 0
    quotas.start(LIMITED, 30.2)  # a minute's half later: one request and 50 tokens back
    with pytest.raises(GatewayError):
        quotas.start(LIMITED, 30.3)  # max_concurrency 1
    quotas.end(LIMITED, 0, 30.4)
    other = Principal("u", "k2", None)
    for _ in range(50):
        quotas.start(other, 31.0)  # another key is not held back by this one
    assert quotas.total_in_flight == 50 and fleet_full(50, 25, 2) and not fleet_full(49, 25, 2)


def test_breaker_states() -> None:
    state = CLOSED
    for _ in range(2):
        state = after(state, False, 0.0, threshold=3)
    assert allows(state, 0.0, 10)[0] and state.opened_at is None
    state = after(state, False, 1.0, threshold=3)
    assert state.opened_at == 1.0 and not allows(state, 10.9, 10)[0]
    ok, probing = allows(state, 11.0, 10)
    assert ok and probing.probing and not allows(probing, 11.5, 10)[0]  # one probe at a time
    assert after(probing, False, 12.0, 3) == Breaker(4, 12.0, False)  # a failed probe: another full cool-down
    assert after(probing, True, 12.0, 3) == CLOSED
    breakers = Breakers(threshold=1, cooldown_s=5)
    assert breakers.record("r0", "a@v1", False, 0.0) and not breakers.acquire("r0", "a@v1", 1.0)
    assert breakers.acquire("r1", "a@v1", 1.0) and breakers.acquire("r0", "b@v1", 1.0)  # per pair
    assert breakers.open_keys("r0") == ["a@v1"] and breakers.wait_s("r0", "a@v1", 1.0) == 4.0
    assert breakers.acquire("r0", "a@v1", 5.0) and not breakers.acquire("r0", "a@v1", 5.1)
    breakers.release("r0", "a@v1")
    assert breakers.acquire("r0", "a@v1", 5.2)
    breakers.record("r0", "a@v1", True, 5.3)
    assert breakers.open_keys("r0") == [] and breakers.states == {}


def test_timeouts_per_alias() -> None:
    config = FleetConfig(timeouts={"first_token_s": 30, "total_s": 100}, alias_timeouts={"slow": {"first_token_s": 90}})
    assert timeouts_for(config, "slow").first_token_s == 90 and timeouts_for(config, "slow").total_s == 100
    assert timeouts_for(config, "other").first_token_s == 30 and timeouts_for(config, "other").connect_s == 5


@pytest.mark.parametrize(("in_flight", "now", "over"), [(0, 0.0, True), (3, 5.0, False), (3, 10.0, True), (-1, 0.0, True)])
def test_drain_over(in_flight: int, now: float, over: bool) -> None:
    assert drain_over(in_flight, now, deadline=10.0) is over
