"""Sending requests: URLs, response reading, and failures (timeouts, 5xx, junk, hang-ups) counted, never dropped."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from lorafleet.cli import app
from lorafleet.eval.client import chat_completions_url, read_response
from lorafleet.eval.runner import EvalOptions, Target, evaluate
from faulty_server import SLOW_S, FaultyServer


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1/chat/completions"),
        ("https://gw.example/v1/", "https://gw.example/v1/chat/completions"),
        ("https://gw.example/team-a", "https://gw.example/team-a/v1/chat/completions"),
        ("http://h/v1/chat/completions", "http://h/v1/chat/completions"),
    ],
)
def test_chat_completions_url(endpoint: str, url: str) -> None:
    assert chat_completions_url(endpoint) == url


COMPLETION = {"choices": [{"message": {"role": "assistant", "content": "{}"}}], "usage": {"completion_tokens": 3}}


@pytest.mark.parametrize(
    ("status", "body", "outcome", "error"),
    [
        (200, json.dumps(COMPLETION), "ok", None),
        (200, json.dumps({"choices": [{"message": {"content": None}}]}), "ok", None),
        (200, "<html>", "bad_response", "not a chat completion"),
        (200, json.dumps({"choices": []}), "bad_response", "not a chat completion"),
        (500, json.dumps({"error": {"message": "boom", "type": "x"}}), "http_error", "HTTP 500: boom"),
        (404, json.dumps({"object": "error", "message": "The model `x` does not exist."}), "http_error", "HTTP 404: The model"),
        (502, "", "http_error", "HTTP 502: Bad Gateway"),
    ],
)
def test_read_response(status: int, body: str, outcome: str, error: str | None) -> None:
    result = read_response(httpx.Response(status, content=body.encode()), latency_s=0.25)
    assert result.status == outcome and result.latency_s == 0.25
    assert (result.error is None) if error is None else result.error.startswith(error)
    if outcome == "ok":
        assert result.answer is not None


def _data(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "dev.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"ticket {i}"}], "expected": {"category": "rules"}} for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_every_failure_kind_is_scored_and_counted(tmp_path: Path) -> None:
    models = ["echo", "slow", "boom", "junk", "hangup"]
    with FaultyServer() as server:
        options = EvalOptions(
            endpoint=server.url, data=_data(tmp_path, 4), concurrency=2, timeout_s=SLOW_S / 3,
            targets=[Target(model=m, system_prompt="rules") for m in models],
        )
        report = evaluate(options)
    by_model = {m.model: m for m in report.models}
    assert list(by_model) == models and report.lines == 4
    assert by_model["echo"].failures == {} and by_model["echo"].exact == 4 and by_model["echo"].latency.p50 is not None
    assert by_model["slow"].failures == {"timeout": 4}
    assert by_model["boom"].failures == {"http_error": 4}
    assert by_model["junk"].failures == {"bad_response": 4}
    assert by_model["hangup"].failures == {"connection_error": 4}
    for name in models[1:]:
        m = by_model[name]
        assert m.requests == m.scored == 4 and m.json_valid == m.exact == 0  # failures stay in the denominators
        assert m.latency.p50 is None and all(c.error for c in m.cases)
        assert m.confusion[0].counts == {"rules": {"(invalid)": 4}}
    assert "engine exploded" in by_model["boom"].cases[0].error


def test_requests_are_greedy_concurrent_and_bounded(tmp_path: Path) -> None:
    with FaultyServer() as server:
        options = EvalOptions(endpoint=server.url, data=_data(tmp_path, 8), concurrency=3, targets=[Target(model="slow")])
        report = evaluate(options)
        assert server.peak_in_flight == 3  # several at once, never more than asked
        assert {r["temperature"] for r in server.requests} == {0.0}
        assert all(r["messages"][0]["role"] == "user" for r in server.requests)  # no system prompt given: none sent
    assert report.models[0].requests == 8 and report.models[0].failures == {}


def test_cli_compares_two_models_and_exits_1_on_failures(tmp_path: Path) -> None:
    prompt = tmp_path / "instructions.txt"
    prompt.write_text("rules\n")
    out = tmp_path / "report.json"
    with FaultyServer() as server:
        result = CliRunner().invoke(app, [
            "eval", "--endpoint", server.url + "/v1", "--model", "echo", "--system-prompt", f"@{prompt}",
            "--compare", "boom", "--data", str(_data(tmp_path, 3)), "--json", "--out", str(out),
        ])
    assert result.exit_code == 1, result.output
    report = json.loads(out.read_text())
    assert [m["model"] for m in report["models"]] == ["echo", "boom"]
    assert report["models"][0]["exact"] == 3 and report["models"][0]["system_prompt"] == "rules"
    assert report["models"][1]["failures"] == {"http_error": 3} and report["models"][1]["system_prompt"] is None


def test_cli_puts_the_prompt_in_the_user_turn_when_asked(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    with FaultyServer() as server:
        result = CliRunner().invoke(app, [
            "eval", "--endpoint", server.url, "--model", "echo", "--system-prompt", "rules", "--prompt-in", "user",
            "--data", str(_data(tmp_path, 2)), "--out", str(out),
        ])
        sent = server.requests
    assert result.exit_code == 0, result.output
    assert all(len(r["messages"]) == 1 for r in sent)  # no system message added
    assert sorted(r["messages"][0]["content"] for r in sent) == ["rules\n\nticket 0", "rules\n\nticket 1"]
    model = json.loads(out.read_text())["models"][0]
    assert model["prompt_in"] == "user" and model["exact"] == 0  # the echo server saw no system message


def test_cli_prints_tables_for_people(tmp_path: Path) -> None:
    with FaultyServer() as server:
        result = CliRunner().invoke(app, [
            "eval", "--endpoint", server.url, "--model", "echo", "--system-prompt", "rules",
            "--data", str(_data(tmp_path, 2)), "--examples", "1",
        ])
    assert result.exit_code == 0, result.output
    for text in ("JSON valid", "100.0% (2/2)", "category accuracy", "latency p95", "expected ↓ predicted →", "first 1 answers"):
        assert text in result.output


def test_cli_names_bad_data_lines_before_sending_anything(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": 3}\n')
    with FaultyServer() as server:
        result = CliRunner().invoke(app, ["eval", "--endpoint", server.url, "--model", "echo", "--data", str(data)])
        assert server.requests == []
    assert result.exit_code == 2
    assert "line 2: messages: Input should be a valid list" in result.output


def test_read_response_keeps_the_gateways_adapter_header() -> None:
    headers = {"x-lorafleet-adapter": "support@v2"}
    assert read_response(httpx.Response(200, json=COMPLETION, headers=headers), 0.1).adapter == "support@v2"
    assert read_response(httpx.Response(503, json={"error": {"message": "x"}}, headers=headers), 0.1).adapter == "support@v2"
    assert read_response(httpx.Response(200, json=COMPLETION), 0.1).adapter is None  # vLLM itself sends no such header


def test_cli_record_refuses_when_no_answer_named_a_version(tmp_path: Path) -> None:
    with FaultyServer() as server:  # like vLLM itself: no x-lorafleet-adapter header
        result = CliRunner().invoke(app, ["eval", "--endpoint", server.url, "--model", "echo", "--data", str(_data(tmp_path, 2)),
                                          "--record", "--json"])
    assert result.exit_code == 1
    assert "no answer named an adapter version" in result.output and "nothing was recorded" in result.output
    assert json.loads(result.stdout)["models"][0]["cases"][0]["adapter"] is None  # the report is still printed
