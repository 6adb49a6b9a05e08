"""deploy/: every metric the alert rules and the Grafana dashboard name is really exported — by the
gateway's /metrics or by vLLM through /metrics/engines — scraped from the running fleet."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serve_fleet import Fleet

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "lorafleet-dashboard.json"
METRIC = re.compile(r"\b(?:lorafleet_[a-z_]+|vllm:[a-z_:]+)")
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return panels + [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]


def named_metrics() -> set[str]:
    return {name for expr in rule_expressions() + dashboard_expressions() for name in METRIC.findall(expr)}


def test_rules_hold_the_seeds_alerts() -> None:
    rules = {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    kv = rules["VllmKvCacheNearlyFull"]
    assert "vllm:kv_cache_usage_perc" in kv["expr"] and "> 0.85" in kv["expr"] and kv["for"] == "5m"
    assert "histogram_quantile(0.95" in rules["LorafleetAdapterP95LatencyHigh"]["expr"] and "> 0.05" in rules["LorafleetAdapterP95LatencyHigh"]["expr"]
    assert "lorafleet_adapter_load_failures_total" in rules["LorafleetAdapterLoadFailures"]["expr"]


def test_dashboard_covers_what_the_issue_lists() -> None:
    text = " ".join(dashboard_expressions())
    for needed in ("rate(lorafleet_requests_total", "histogram_quantile(0.5", "histogram_quantile(0.95",
                   "lorafleet_time_to_first_token_seconds_bucket", "lorafleet_fallbacks_total", "vllm:kv_cache_usage_perc"):
        assert needed in text
    assert len(named_metrics()) >= 12


@pytest.mark.integration
@pytest.mark.timeout(1800)  # may be the test that starts the session's fleet
def test_every_named_metric_is_exported(fleet: Fleet) -> None:
    exported: set[str] = set()
    for path in ("/metrics", "/metrics/engines"):
        text = httpx.get(f"{fleet.url}{path}", timeout=30).text
        exported |= {family.name + suffix for family in text_string_to_metric_families(text) for suffix in SUFFIXES}
    missing = sorted(named_metrics() - exported)
    assert not missing, f"named in deploy/ but exported by neither the gateway nor vLLM: {missing}"
