"""The Grafana dashboard and the Prometheus alerting rules shipped in `llmguard.dashboards`.

Every PromQL expression may only name metrics llmguard really exports (read from a live registry after traffic),
must parse (promtool), and the alerts must fire when they should (`promtool test rules`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmguard import Guard
from llmguard.dashboards import alerts_path, dashboard_path
from llmguard.testing import Scenario, SimulatedProvider, ToolCall, serve

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}
# Grafana's built-in variables become durations, the dashboard's own variables match-all regexes.
GRAFANA_INTERVALS = re.compile(r"\$\{?__\w+\}?")
GRAFANA_VARIABLES = re.compile(r"\$\{?\w+\}?")

# Metrics an operator needs to see; each must be on the dashboard.
DASHBOARD_METRICS = {
    "llmguard_llm_calls_total",
    "llmguard_errors_total",
    "llmguard_time_to_first_token_seconds_bucket",
    "llmguard_output_tokens_per_second_bucket",
    "llmguard_llm_call_duration_seconds_bucket",
    "llmguard_cost_usd_total",
    "llmguard_tokens_total",
    "llmguard_tool_calls_total",
    "llmguard_guard_blocks_total",
    "llmguard_active_sessions",
    "llmguard_session_cost_usd_bucket",
    "llmguard_store_errors_total",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed, so the alerting rules cannot be checked. Install it with "
            "`apt-get install prometheus` (Debian/Ubuntu) or put the promtool binary of a Prometheus release on PATH."
        )
    return path


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name a real guard exports after a little traffic (the exposition, not a list kept by hand)."""
    return _exported_after_traffic()


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(dashboard_path().read_text(encoding="utf-8"))
    return data


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"provider", "model", "feature"} <= set(variables)
    for name in ("provider", "model", "feature"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert variables[name]["includeAll"] and variables[name]["multi"]
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_dashboard_uses_only_exported_metrics(dashboard: dict[str, Any], exported: set[str]) -> None:
    used: set[str] = set()
    for expr in _dashboard_exprs(dashboard):
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, f"not exported by llmguard: {sorted(names - exported)} in {expr}"
        used |= names
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.match(r"label_values\((\w+)", variable["definition"])
            assert match is not None and match.group(1) in exported, variable["definition"]
    assert used >= DASHBOARD_METRICS, f"missing from the dashboard: {sorted(DASHBOARD_METRICS - used)}"


def test_dashboard_promql_parses(dashboard: dict[str, Any], promtool: str, tmp_path: Path) -> None:
    rules = [
        {"alert": f"panel_{n}", "expr": GRAFANA_VARIABLES.sub(".*", GRAFANA_INTERVALS.sub("5m", expr))}
        for n, expr in enumerate(_dashboard_exprs(dashboard))
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    _run(promtool, "check", "rules", str(path))


def test_alert_rules_are_valid(promtool: str) -> None:
    output = _run(promtool, "check", "rules", str(alerts_path()))
    assert "SUCCESS: 6 rules found" in output


def test_alert_rules_use_only_exported_metrics(exported: set[str]) -> None:
    text = alerts_path().read_text(encoding="utf-8")
    exprs = re.findall(r"expr: \|\n((?:          .*\n)+)", text)
    assert len(exprs) == 6
    for expr in exprs:
        names = metric_names(expr)
        assert names and names <= exported, f"not exported by llmguard: {sorted(names - exported)} in {expr}"


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    """An input series of a promtool unit test (`values` in promtool's expanding notation)."""
    matchers = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{matchers}}}", "values": values}


def quiet(at: str, alert: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def fires(at: str, alert: str, labels: dict[str, str], summary: str, description: str) -> dict[str, Any]:
    expected = {"exp_labels": labels, "exp_annotations": {"summary": summary, "description": description}}
    return {"eval_time": at, "alertname": alert, "exp_alerts": [expected]}


def test_alerts_fire(promtool: str, tmp_path: Path) -> None:
    """`promtool test rules`: each alert fires on the series it is about, with its annotations rendered, and the
    quiet cases stay quiet."""
    call = {"provider": "openai", "model": "gpt-4o-mini"}
    warning = {"severity": "warning"}
    cases: list[tuple[list[dict[str, str]], list[dict[str, Any]]]] = [
        (  # /chat spends $0.006/hour for 90 minutes, then $3/hour; /agent spends $3/hour all along
            [
                series("llmguard_cost_usd_total", "0+0.0001x90 0.059+0.05x40", feature="/chat", **call),
                series("llmguard_cost_usd_total", "0+0.05x130", feature="/agent", **call),
            ],
            [
                quiet("80m", "LLMGuardCostSpike"),
                fires(
                    "110m", "LLMGuardCostSpike", {**warning, "feature": "/chat"},
                    "LLM spend of /chat jumped",
                    "Feature /chat spent at 3.00 USD/hour over the last 15 minutes, more than 3 times its rate over "
                    "the hour before.",
                ),
            ],
        ),
        (  # 1 call in 11 fails
            [
                series("llmguard_llm_calls_total", "0+60x30", **call, feature="/chat", outcome="success"),
                series("llmguard_llm_calls_total", "0+6x30", **call, feature="/chat", outcome="error"),
            ],
            [
                quiet("5m", "LLMGuardHighErrorRate"),
                fires(
                    "20m", "LLMGuardHighErrorRate", {**warning, **call},
                    "LLM calls to openai/gpt-4o-mini are failing",
                    "9.091% of calls to gpt-4o-mini failed over the last 5 minutes. See llmguard_errors_total by "
                    "error_type for the kind of failure.",
                ),
            ],
        ),
        (  # every first token between 5.12 s and 10.24 s
            [
                series("llmguard_time_to_first_token_seconds_bucket", values, **call, feature="/chat", le=le)
                for le, values in (("2.56", "0x40"), ("5.12", "0x40"), ("10.24", "0+10x40"), ("+Inf", "0+10x40"))
            ],
            [
                quiet("10m", "LLMGuardSlowFirstToken"),
                fires(
                    "30m", "LLMGuardSlowFirstToken", {**warning, **call},
                    "Slow first tokens from openai/gpt-4o-mini",
                    "p95 time to first token is 9.984s over the last 10 minutes.",
                ),
            ],
        ),
        (  # a runaway agent is refused twice a minute; another feature only now and then
            [
                series("llmguard_guard_blocks_total", "0+2x30", feature="/agent", reason="loop_detected"),
                series("llmguard_guard_blocks_total", "0+0.1x30", feature="/chat", reason="session_budget"),
            ],
            [
                fires(
                    "20m", "LLMGuardBlocksSpike", {**warning, "feature": "/agent", "reason": "loop_detected"},
                    "llmguard blocks many calls of /agent (loop_detected)",
                    "30 calls of /agent were refused for loop_detected in the last 15 minutes. Look for runaway "
                    "agents or budgets set too low.",
                )
            ],
        ),
        (  # Redis fails once a minute for reserve; settle is fine; the service is scraped
            [
                series("llmguard_store_errors_total", "0+1x30", operation="reserve"),
                series("llmguard_store_errors_total", "0x30", operation="settle"),
                series("llmguard_active_sessions", "3x30"),
            ],
            [
                quiet("3m", "LLMGuardStoreErrors"),
                fires(
                    "15m", "LLMGuardStoreErrors", {"severity": "critical", "operation": "reserve"},
                    "llmguard's budget store is failing (reserve)",
                    "5 reserve operations failed in the last 5 minutes. Check Redis (LLMGUARD_REDIS_URL) and the "
                    "network to it.",
                ),
                quiet("15m", "LLMGuardNoData"),
            ],
        ),
        (  # nothing from llmguard at all
            [series("up", "1x30", job="other")],
            [
                quiet("5m", "LLMGuardNoData"),
                fires(
                    "15m", "LLMGuardNoData", warning,
                    "No llmguard metrics are being scraped",
                    "Prometheus has no llmguard_active_sessions series: the service is down, or its /metrics "
                    "endpoint is no longer scraped.",
                ),
            ],
        ),
    ]  # fmt: skip
    tests = [{"interval": "1m", "input_series": inputs, "alert_rule_test": checks} for inputs, checks in cases]
    path = tmp_path / "alerts-test.yml"
    path.write_text(json.dumps({"rule_files": [str(alerts_path())], "evaluation_interval": "1m", "tests": tests}))
    _run(promtool, "test", "rules", str(path))


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small tokenizer, enough for our own expressions)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, including Grafana variables
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    words = re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text)  # identifiers that are not functions
    return {word for word in words if word not in _KEYWORDS}


def test_metric_names_tokenizer() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(llmguard_time_to_first_token_seconds_bucket{model=~"$model"}'
        "[$__rate_interval]))) > 3 * sum without (x) (rate(other_metric[1h] offset 15m)) and on (a) 1e3 > bool up"
    )
    assert metric_names(expr) == {"llmguard_time_to_first_token_seconds_bucket", "other_metric", "up"}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return panels


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) if p["type"] != "row" for t in p["targets"]]
    assert len(exprs) >= 15
    return exprs


def _run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _exported_after_traffic() -> set[str]:
    """Drive a guard with real traffic (a streamed agent step, a cached chat, an ended session) and read back the
    series names its registry exposes. A family with no samples yet still names its series, through its type."""
    import asyncio

    registry = CollectorRegistry()
    sim = SimulatedProvider(
        default=Scenario(text="hi there", input_tokens=40, cache_read_tokens=10),
        scenarios={"gpt-4o-mini": Scenario(text="", tool_calls=(ToolCall("lookup", {"query": "x"}),))},
    )

    async def traffic(url: str) -> None:
        guard = Guard(registry=registry)
        async with guard.async_client(base_url=url, timeout=10) as client:
            async with guard.session("dashboards", feature="/agent"):
                body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
                        "messages": [{"role": "user", "content": "go"}]}  # fmt: skip
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    async for _ in response.aiter_bytes():
                        pass
                body = {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 100,
                    "messages": [{"role": "user", "content": "hi"}],
                }
                (await client.post("/v1/messages", json=body)).raise_for_status()
        await guard.end_session("dashboards")
        await guard.aclose()

    with serve(sim) as url:
        asyncio.run(traffic(url))
    assert len(sim.requests) == 2
    names: set[str] = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        names.update(f"{family.name}{suffix}" for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    assert "llmguard_time_to_first_token_seconds_bucket" in names  # the traffic reached the metrics
    return names
