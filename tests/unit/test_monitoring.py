"""contrib/: the Prometheus rules pass promtool's check and unit tests, and the rules and
the Grafana dashboard read only series that gatewayd exports or the rules record."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from gatewayd.observability import metrics
from tests.conftest import REQUIRE_SERVICES

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib" / "prometheus" / "gatewayd.rules.yml"
RULE_TESTS = ROOT / "contrib" / "prometheus" / "gatewayd.rules.test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "gatewayd.json"

# Series every Prometheus has for a scrape target, which the rules may use.
PROMETHEUS_SERIES = frozenset({"up"})
# Labels Prometheus adds to every scraped series; `pid` comes from
# prometheus_client's multiprocess mode for liveall gauges.
TARGET_LABELS = frozenset({"job", "instance", "pid"})
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NAME = re.compile(r"(?<![\w:.$])[a-zA-Z_:][\w:]*")
_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")


def exported() -> dict[str, frozenset[str]]:
    """Every series name gatewayd's registry exports, with the labels it may carry."""
    series: dict[str, frozenset[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = frozenset(metric._labelnames) | TARGET_LABELS
        for suffix in _SUFFIXES[metric._type]:
            name = metric._name + suffix
            series[name] = labels | {"le"} if suffix == "_bucket" else labels
    return series


def all_rules() -> list[dict[str, Any]]:
    """Every rule of every group in the rules file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def recorded() -> set[str]:
    """The series the recording rules define."""
    return {rule["record"] for rule in all_rules() if "record" in rule}


def unknown_series(expr: str, known: set[str]) -> Iterator[str]:
    """Names in a PromQL expression that look like series (gatewayd_* or level:metric:op)
    and are not in `known`; string literals are skipped."""
    bare = _STRING.sub('""', expr)
    for name in _NAME.findall(bare):
        if (name.startswith("gatewayd_") or ":" in name) and name not in known:
            yield name


def unknown_labels(expr: str, series: dict[str, frozenset[str]]) -> Iterator[str]:
    """`series{label...}` matchers in `expr` naming a label that gatewayd's series lacks."""
    for name, matchers in _SELECTOR.findall(_STRING.sub('""', expr)):
        for label in _MATCHER_LABEL.findall(matchers):
            if name in series and label not in series[name]:
                yield f"{name}{{{label}}}"


def require_promtool() -> str:
    """The promtool binary; skips without it, fails instead when services are required."""
    path = shutil.which("promtool")
    if path is None:
        message = "promtool not installed (Debian: apt-get install prometheus)"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message} (GATEWAYD_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    return path


def promtool(*args: str) -> str:
    """Run promtool; its output, after asserting it succeeded."""
    result = subprocess.run(
        [require_promtool(), *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_checks_the_rules() -> None:
    """`promtool check rules` accepts the rules file and finds every rule in it."""
    output = promtool("check", "rules", RULES.name)
    assert f"SUCCESS: {len(all_rules())} rules found" in output


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules` passes: alerts fire on their input series, quiet on the others."""
    assert "SUCCESS" in promtool("test", "rules", RULE_TESTS.name)


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    """Each alert in the rules has a promtool case where it fires and one where it does not."""
    alerts = {rule["alert"] for rule in all_rules() if "alert" in rule}
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert alerts - firing == set()
    assert alerts - quiet == set()


def test_every_alert_says_what_to_do() -> None:
    """Each alert has a severity, a summary, a description and runbook text."""
    for rule in all_rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert {"summary", "description", "runbook"} <= rule["annotations"].keys()


def test_rules_read_only_what_gatewayd_exports() -> None:
    """Every series and matcher label in a rule expression is gatewayd's or recorded by a rule."""
    series = exported()
    known = set(series) | recorded() | PROMETHEUS_SERIES
    for rule in all_rules():
        name = rule.get("record") or rule["alert"]
        assert list(unknown_series(rule["expr"], known)) == [], name
        assert list(unknown_labels(rule["expr"], series)) == [], name


def dashboard_expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expression) for every query of every panel, rows included."""
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            yield variable["name"], query["query"] if isinstance(query, dict) else query


def test_the_dashboard_reads_only_recorded_or_exported_series() -> None:
    """Every Grafana expression names only series that the rules record or gatewayd exports."""
    dashboard = json.loads(DASHBOARD.read_text())
    series = exported()
    known = set(series) | recorded()
    found = list(dashboard_expressions(dashboard))
    assert len(found) >= 20
    for title, expr in found:
        assert list(unknown_series(expr, known)) == [], title
        assert list(unknown_labels(expr, series)) == [], title


def test_the_dashboard_covers_each_area() -> None:
    """The dashboard has a row for traffic, latency, errors, upstreams, guardrails,
    rate limits and the audit pipeline, each with panels under it."""
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    titles = [row["title"] for row in rows]
    for area in ("Traffic", "Latency", "Errors", "Upstreams", "Guardrails", "Rate limits", "Audit"):
        assert area in titles
    order = [p["type"] for p in dashboard["panels"]]
    assert all(b != "row" for a, b in itertools.pairwise(order) if a == "row")


def test_counters_the_alerts_read_start_at_zero() -> None:
    """A fresh process exports failed reloads and worker restarts as 0, so the first
    one is an increase Prometheus can see."""
    code = "from gatewayd.observability.metrics import exposition; print(exposition().decode())"
    text = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for sample in (
        'gatewayd_config_reloads_total{result="error"} 0.0',
        'gatewayd_worker_restarts_total{reason="died"} 0.0',
        'gatewayd_worker_restarts_total{reason="timeout"} 0.0',
    ):
        assert sample in text.splitlines()


def test_the_name_checks_catch_a_typo() -> None:
    """A misspelt series or label is reported (so the checks above can fail)."""
    series = exported()
    known = set(series) | recorded()
    expr = 'rate(gatewayd_request_total{route="a"}[1m]) / route:gatewayd_requests:rate5m'
    assert list(unknown_series(expr, known)) == [
        "gatewayd_request_total",
        "route:gatewayd_requests:rate5m",
    ]
    assert list(unknown_labels('gatewayd_requests_total{upstream="x"}', series)) == [
        "gatewayd_requests_total{upstream}"
    ]
