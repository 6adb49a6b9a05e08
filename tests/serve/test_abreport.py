"""`lorafleet ab-report`: per-version statistics from a request log, as a table and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafleet.cli import app
from lorafleet.serve.abreport import percentile, summarize
from lorafleet.serve.requestlog import RequestLog, RequestRecord, read_records


def rec(version: str | None, latency: float, status: int = 200, fallback: bool = False, alias: str = "support",
        tokens: int | None = 10) -> dict:
    return {"alias": alias, "version": version, "status": status, "latency_s": latency, "ttft_s": latency / 2,
            "prompt_tokens": 5, "completion_tokens": tokens, "fallback": fallback}


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, None), ([3.0], 95, 3.0), ([1, 2, 3, 4], 50, 2.5), ([1, 2, 3, 4, 5], 50, 3), (list(range(1, 101)), 95, 95.05),
     ([5, 1, 3], 0, 1), ([5, 1, 3], 100, 5)],
)
def test_percentile(values, q, expected) -> None:
    assert percentile([float(v) for v in values], q) == (pytest.approx(expected) if expected is not None else None)


def test_summarize_per_version() -> None:
    records = [rec("support@v1", 0.1 * i) for i in range(1, 10)] + [
        rec("support@v2", 0.5), rec("support@v2", 0.7, status=502, tokens=None), rec("support@v2", 0.3, fallback=True),
        rec(None, 0.0, status=503, tokens=None), rec("other@v1", 9.0, alias="other"),
    ]
    stats = {s.version: s for s in summarize(records, "support")}
    assert list(stats) == ["support@v1", "support@v2", "-"]  # most requests first; unrouted requests under "-"
    v1, v2 = stats["support@v1"], stats["support@v2"]
    assert v1.requests == 9 and v1.share == pytest.approx(9 / 13)
    assert v1.p50_latency_s == pytest.approx(0.5) and v1.p95_latency_s == pytest.approx(0.86)
    assert v1.error_rate == 0 and v1.fallback_rate == 0 and v1.completion_tokens == 90
    assert v2.requests == 3 and v2.error_rate == pytest.approx(1 / 3) and v2.fallback_rate == pytest.approx(1 / 3)
    assert v2.p50_latency_s == pytest.approx(0.4)  # failed requests do not count towards latency
    assert stats["-"].error_rate == 1 and stats["-"].p50_latency_s is None
    assert summarize(records, "missing") == []


def test_cli_table_and_json(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    log = RequestLog(path)
    for i in range(4):
        log.write(RequestRecord(time="t", request_id=str(i), endpoint="chat.completions", alias="support",
                                version=f"support@v{1 + i % 2}", latency_s=0.2 + i, completion_tokens=7))
    log.close()
    with path.open("a") as f:
        f.write("{broken\n")
    runner = CliRunner()
    result = runner.invoke(app, ["ab-report", str(path), "--alias", "support", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {v["version"]: v["requests"] for v in report["versions"]} == {"support@v1": 2, "support@v2": 2}
    assert report["skipped_lines"] == 1
    table = runner.invoke(app, ["ab-report", str(path), "--alias", "support"])
    assert table.exit_code == 0 and "support@v1" in table.stdout and "p95 latency" in table.stdout
    missing = runner.invoke(app, ["ab-report", str(path), "--alias", "nope"])
    assert missing.exit_code == 1 and "no requests for alias 'nope'" in missing.output


def test_read_records_reports_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"alias": "a"}\n\n[1, 2]\nnot json\n{"alias": "b"}\n')
    records, problems = read_records(path)
    assert [r["alias"] for r in records] == ["a", "b"]
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in problems] == ["3", "4"]


def test_prompts_are_logged_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    log = RequestLog(path)
    log.write(RequestRecord(time="t", request_id="1", endpoint="completions", alias="a"))
    log.write(RequestRecord(time="t", request_id="2", endpoint="completions", alias="a", prompt="secret"))
    log.close()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert "prompt" not in first and second["prompt"] == "secret"
    assert first["version"] is None and "ttft_s" not in first
