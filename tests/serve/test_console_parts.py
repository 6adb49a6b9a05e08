"""The console's pure parts as tables of cases: session cookies and CSRF tokens, the weight form,
engine metrics, loss curves, recorded evals and the live-metrics arithmetic."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from lorafleet.registry.errors import InvalidSpec
from lorafleet.serve.console.live import LogTail, arrival, live_view
from lorafleet.serve.console.session import SessionSigner
from lorafleet.registry.evals import EvalRecord, EvalSummary
from lorafleet.serve.console.views import EngineStats, engine_stats, eval_rows, loss_curves, manifest_facts, routing_targets

NOW = 1_800_000_000.0
SECRET = b"s" * 32


def test_session_round_trip_and_csrf() -> None:
    signer = SessionSigner(SECRET)
    cookie = signer.issue("admin:k1", NOW, ttl_s=60)
    session = signer.read(cookie, NOW + 59)
    assert session is not None and session.subject == "admin:k1" and session.expires_at == int(NOW) + 60
    token = signer.csrf_token(session)
    assert signer.csrf_ok(session, token)
    other = signer.read(signer.issue("admin:k1", NOW), NOW)
    assert other is not None and not signer.csrf_ok(other, token)  # a token belongs to one session


@pytest.mark.parametrize("tamper", [
    lambda c: None,
    lambda c: "",
    lambda c: c + "x",  # MAC changed
    lambda c: c.replace("admin:k1", "admin:k2"),  # subject changed
    lambda c: ".".join(c.split(".")[:3]),  # MAC missing
    lambda c: c.split(".")[0] + "." + str(int(NOW) + 99999) + "." + ".".join(c.split(".")[2:]),  # expiry pushed out
])
def test_forged_or_edited_cookies_are_refused(tamper) -> None:  # type: ignore[no-untyped-def]
    signer = SessionSigner(SECRET)
    assert signer.read(tamper(signer.issue("admin:k1", NOW, ttl_s=60)), NOW) is None


def test_expired_cookie_and_other_secret_are_refused() -> None:
    signer = SessionSigner(SECRET)
    cookie = signer.issue("open", NOW, ttl_s=60)
    assert signer.read(cookie, NOW + 60) is None
    assert SessionSigner(b"t" * 32).read(cookie, NOW) is None


@pytest.mark.parametrize("token", [None, "", "0" * 64])
def test_missing_or_wrong_csrf_token(token: str | None) -> None:
    signer = SessionSigner(SECRET)
    session = signer.read(signer.issue("open", NOW), NOW)
    assert session is not None and not signer.csrf_ok(session, token)


@pytest.mark.parametrize("subject", ["", "a b", "x.y", "a" * 81])
def test_subjects_that_would_break_the_cookie_are_refused(subject: str) -> None:
    with pytest.raises(ValueError):
        SessionSigner(SECRET).issue(subject, NOW)


@pytest.mark.parametrize("rows, expected", [
    ([("s@v1", "90"), ("s@v2", "10")], ["s@v1=90", "s@v2=10"]),
    ([("s@v1", " 100 "), ("s@v2", "0"), ("s@v3", "")], ["s@v1=100"]),
    ([("s@v1", "007"), ("s@v2", "93")], ["s@v1=7", "s@v2=93"]),
])
def test_weight_form_to_targets(rows: list[tuple[str, str]], expected: list[str]) -> None:
    assert routing_targets(rows) == expected


@pytest.mark.parametrize("rows, message", [
    ([("s@v1", "90.5"), ("s@v2", "9.5")], "s@v1"),
    ([("s@v1", "-10"), ("s@v2", "110")], "whole number"),
    ([("s@v1", "1e2")], "whole number"),
    ([("s@v1", "٣")], "whole number"),  # a non-ASCII digit is not a weight
    ([("s@v1", "0"), ("s@v2", "")], "at least one"),
])
def test_weight_form_refusals(rows: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        routing_targets(rows)


def test_engine_stats_per_replica() -> None:
    text = """# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m",replica="replica-0"} 0.25
vllm:kv_cache_usage_perc{engine="0",model_name="m",replica="replica-1"} 0.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m",replica="replica-0"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m",replica="replica-0"} 1.0
"""
    assert engine_stats(text) == {
        "replica-0": EngineStats(kv_cache_usage=0.25, running=3, waiting=1),
        "replica-1": EngineStats(kv_cache_usage=0.0),
    }
    assert engine_stats("") == {}


def test_an_engine_answering_something_else_than_prometheus_text_is_left_out() -> None:
    from lorafleet.serve.engine_metrics import relabel

    good = "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\"} 2.0\n"
    families = relabel({"a": '{"id": "chatcmpl", "choices": []}', "b": good})
    assert [(s.labels["replica"], s.value) for f in families for s in f.samples] == [("b", 2.0)]


def test_loss_curves_keep_train_and_eval_apart_and_count_bad_lines() -> None:
    lines = [
        {"type": "train", "step": 1, "loss": 2.5, "lr": 1e-3},
        {"type": "train", "step": 2, "loss": 2.0},
        {"type": "eval", "step": 2, "eval_loss": 2.2},
        {"type": "train", "step": 3, "loss": float("nan")},
        {"type": "train", "step": "4", "loss": 1.0},
        {"type": "other", "step": 5},
    ]
    curves = loss_curves(lines)
    assert (curves.train_steps, curves.train_loss) == ([1, 2], [2.5, 2.0])
    assert (curves.eval_steps, curves.eval_loss) == ([2], [2.2])
    assert curves.unreadable == 3


def test_manifest_facts_name_the_fields_people_compare() -> None:
    manifest = {"base_model": "smollm2", "base_fingerprint": "ab" * 32, "tokenizer_fingerprint": "cd" * 32, "max_seq_length": 256,
                "lora": {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "use_rslora": False,
                         "use_dora": False, "quantization": "none"},
                "dataset": {"sha256": "ef" * 32, "train_samples": 21, "eval_samples": 3},
                "metrics": {"train_loss": 0.51234, "eval_loss": None, "steps": 6, "tokens_seen": 4000}}
    facts = dict(manifest_facts(manifest))
    assert facts["rank / alpha"] == "8 / 16.0"
    assert facts["target modules"] == "q_proj, v_proj"
    assert facts["dataset samples"] == "train 21, eval 3"
    assert facts["final train / eval loss"] == "0.5123 / ?"
    assert facts["max sequence length"] == "256"
    assert manifest_facts({})[0] == ("base model", "?")  # an old or partial manifest still renders


@pytest.mark.parametrize("summary, model, expected", [
    (EvalSummary(scored=20, failed=0, json_valid=1.0, exact=0.75, fields={"priority": 0.8, "category": 0.95}, latency_p50_s=0.4,
                 latency_p95_s=1.234), "support",
     ("support", "18 of 20", "100.0%", "category 95.0%, priority 80.0%", "75.0%", "0.40 s / 1.23 s")),
    (EvalSummary(scored=0, failed=2, json_valid=None, exact=None, system_prompt=True), "support@v2",
     ("support@v2 + prompt", "18 of 20, 2 failed", "-", "-", "-", "- / -")),  # nothing scored, no latency: dashes, not 0%
])
def test_eval_rows(summary: EvalSummary, model: str, expected: tuple[str, ...]) -> None:
    record = EvalRecord("support", 2, model, "2026-11-30T20:00:00+00:00", "dev.jsonl", "ab" * 32, 18, 20, summary)
    (row,) = eval_rows([record])
    assert (row.date, row.data) == ("2026-11-30 20:00:00", "dev.jsonl (abababababab)")
    assert (row.asked, row.answered, row.json_valid, row.fields, row.exact, row.latency) == expected


def _record(seconds_ago: float, alias: str, version: str, status: int = 200, latency: float = 1.0, ttft: float | None = None,
            fallback: bool = False) -> dict:
    at = datetime.fromtimestamp(NOW - seconds_ago, timezone.utc).isoformat()
    record = {"time": at, "alias": alias, "version": version, "status": status, "latency_s": latency, "fallback": fallback}
    if ttft is not None:
        record["ttft_s"] = ttft
    return record


def test_live_view_window_table() -> None:
    records = [
        *[_record(10, "s", "s@v1", latency=float(i)) for i in range(1, 10)],  # 9 ok, latencies 1..9
        _record(20, "s", "s@v1", status=502),
        _record(5, "s", "s@v2", latency=0.5, ttft=0.1, fallback=True),
        _record(120, "s", "s@v2"),  # outside the 60 s window, inside the 300 s span
        _record(400, "s", "s@v1"),  # outside the span
        {"alias": "s", "version": "s@v1"},  # no time: left out
    ]
    view = live_view([(arrival(r), r) for r in records], NOW, ["s"])
    rows = {(t.alias, t.version): t for t in view.table}
    v1, v2 = rows["s", "s@v1"], rows["s", "s@v2"]
    assert v1.requests == 10 and v1.rate_per_s == pytest.approx(10 / 60)
    assert v1.p50_latency_s == 5.0 and v1.p95_latency_s == pytest.approx(8.6)
    assert v1.error_rate == pytest.approx(0.1) and v1.fallback_rate == 0.0 and v1.p50_ttft_s is None
    assert v2.requests == 1 and v2.fallback_rate == 1.0 and v2.p50_ttft_s == 0.1
    assert len(view.bucket_starts) == 60 and view.bucket_starts[0] == NOW - 300
    series = view.series["s → s@v1"]
    assert sum(series["rate"]) * view.bucket_s == 10  # every in-span request counted once
    assert [v.version for v in view.ab["s"]] == ["s@v1", "s@v2"]  # A/B over everything read, as ab-report
    assert view.ab["s"][0].requests == 12  # every record read, the timeless one included


def test_live_view_empty_buckets_are_gaps_not_zeros() -> None:
    record = _record(2, "base", "base")
    view = live_view([(arrival(record), record)], NOW, ["quiet"])
    assert view.ab == {}  # a canary alias without traffic has no A/B table
    series = view.series["base"]
    assert series["p95"][-1] == 1.0 and series["p95"][0] is None and series["errors"][0] is None
    assert series["rate"][0] == 0.0


def test_log_tail_reads_only_new_whole_lines(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "requests.jsonl"
    log.write_text('{"n": 1}\n{"n": 2}\nnot json\n[1]\n{"n": 3}\n')
    first = len('{"n": 1}\n{"n": 2}\nnot j')
    tail = LogTail(log, max_bytes=log.stat().st_size - first)  # the first read starts inside "not json"
    assert [r["n"] for _, r in tail.read()] == [3]
    with log.open("a") as f:
        f.write('{"n": 4}\n{"n": ')  # the gateway is half-way through a line
    assert [r["n"] for _, r in tail.read()] == [3, 4]
    with log.open("a") as f:
        f.write('5}\n')
    assert [r["n"] for _, r in tail.read()] == [3, 4, 5]
    log.write_text('{"n": 6}\n')  # truncated (a new log): read afresh
    assert [r["n"] for _, r in tail.read()] == [6]
    assert [r["n"] for _, r in LogTail(log, max_records=1).read()] == [6]
    assert LogTail(tmp_path / "missing.jsonl").read() == []
    log.write_text('{"n": 7}\n{"n": 8}\n')
    assert [r["n"] for _, r in LogTail(log, max_bytes=len('{"n": 8}\n')).read()] == [8]  # starts on a line: kept


def test_log_tail_keeps_the_most_recent_records(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "requests.jsonl"
    log.write_text("".join(f'{{"n": {i}}}\n' for i in range(10)))
    assert [r["n"] for _, r in LogTail(log, max_records=3).read()] == [7, 8, 9]
