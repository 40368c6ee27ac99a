"""The alert rules and the dashboard: they use only metrics the daemon exports, Prometheus
loads them, and the drift, freshness, overdue-pass and daemon-down alerts fire on the
series that should fire them (`promtool`, skipped where it is not installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cdc.ops.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "cdc-dashboard.json"
PROMETHEUS_SERIES = {"up"}  # written by Prometheus itself
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
METRIC = re.compile(r"\b(cdc_[a-z0-9_]+|up)\b")


def exported_series() -> set[str]:
    """Every series name the daemon's /metrics can carry (from its `# TYPE` lines, which
    are there before any labelled sample is)."""
    names = set()
    for line in Metrics().render().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total") if kind == "counter" else name
            names |= {base + suffix for suffix in SUFFIXES[kind]}
    return names


def rules() -> list[dict[str, object]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_every_metric_used_is_exported() -> None:
    exported = exported_series() | PROMETHEUS_SERIES
    expressions = [str(rule["expr"]) for rule in rules()] + dashboard_expressions()
    used = {name for expr in expressions for name in METRIC.findall(expr)}
    assert used - exported == set()
    assert {"cdc_drift_rows", "cdc_freshness_seconds"} <= used


def test_the_alerts_cover_what_the_monitor_and_the_slot_report() -> None:
    by_name = {str(rule["alert"]): str(rule["expr"]) for rule in rules()}
    assert set(by_name) == {
        "CdcDriftDetected", "CdcFreshnessHigh", "CdcMonitorPassOverdue",
        "CdcSlotRetainedWalGrowing", "CdcDaemonDown",
    }  # fmt: skip
    assert "cdc_drift_rows" in by_name["CdcDriftDetected"]
    assert "cdc_slot_retained_wal_bytes" in by_name["CdcSlotRetainedWalGrowing"]


def test_compose_prometheus_loads_the_rules() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = dict(
        volume.rsplit(":", 1)[0].split(":", 1)
        for volume in compose["services"]["prometheus"]["volumes"]
    )
    assert mounts["./prometheus/alerts.yml"] in config["rule_files"]
    assert (DEPLOY / "prometheus" / "alerts.yml").exists()


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")

# Series over time (1m steps) and the alerts they must fire: promtool's rule unit tests.
RULE_TESTS = {
    "evaluation_interval": "1m",
    "tests": [
        {
            "interval": "1m",
            "input_series": [
                {"series": 'cdc_drift_rows{job="cdc",instance="a",table="director.t",'
                           'target="historic"}', "values": "0 0 3 3"},
                {"series": 'cdc_drift_rows{job="cdc",instance="a",table="director.t",'
                           'target="clickhouse"}', "values": "0 0 0 0"},
                {"series": 'cdc_freshness_seconds{job="cdc",instance="a"}',
                 "values": "10 400 400 400 400 400 400 400 400"},
                {"series": 'cdc_monitor_interval_seconds{job="cdc",instance="a"}',
                 "values": "60x40"},
                {"series": 'cdc_monitor_last_pass_timestamp_seconds{job="cdc",instance="a",'
                           'table="director.t"}', "values": "0x40"},
                {"series": 'up{job="cdc",instance="a"}', "values": "1 1 0 0 0 0"},
            ],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "CdcDriftDetected", "exp_alerts": []},
                {"eval_time": "2m", "alertname": "CdcDriftDetected", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "table": "director.t",
                                    "target": "historic"}}]},
                {"eval_time": "4m", "alertname": "CdcFreshnessHigh", "exp_alerts": []},
                {"eval_time": "7m", "alertname": "CdcFreshnessHigh", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "job": "cdc", "instance": "a"}}]},
                {"eval_time": "5m", "alertname": "CdcMonitorPassOverdue", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "CdcMonitorPassOverdue", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "job": "cdc", "instance": "a",
                                    "table": "director.t"}}]},
                {"eval_time": "3m", "alertname": "CdcDaemonDown", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "CdcDaemonDown", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "job": "cdc", "instance": "a"}}]},
            ],
        }
    ],
}  # fmt: skip


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


@needs_promtool
def test_the_alerts_fire_on_the_series_they_watch(tmp_path: Path) -> None:
    """The expressions and their `for`: annotations (texts for people) are left out."""
    assert PROMTOOL is not None
    bare = yaml.safe_load(ALERTS.read_text())
    for group in bare["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(bare))
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(yaml.safe_dump({**RULE_TESTS, "rule_files": ["alerts.yml"]}))
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
