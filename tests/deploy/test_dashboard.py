"""The Grafana dashboard queries only metrics and labels that the fmlite servers export."""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from chart_rendering import CHART_DIR

DASHBOARD = CHART_DIR / "dashboards" / "fmlite-platform.json"

# Metrics that every tier must export for the dashboard to be complete.
REQUIRED_METRICS = {
    "fmlite_request_seconds",
    "fmlite_chunk_retries_total",
    "fmlite_chunk_timeouts_total",
    "fmlite_unknown_glances_total",
    "fmlite_cold_start_users_total",
    "fmlite_predictions_total",
    "fmlite_model_version_info",
    "fmlite_profile_version_info",
}
METRIC_NAME = re.compile(r"\bfmlite_[a-z_]+\b")
GROUPING = re.compile(r"\bby \(([^)]*)\)")
MATCHER = re.compile(r"([a-z_]+)\s*(?:=|!=|=~|!~)\s*\"")
LEGEND_LABEL = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


def exported_series() -> dict[str, set[str]]:
    """Return the series names that the servers' metric classes export, with their label names.

    A series that several tiers export keeps only the labels that all of them carry.
    """
    from controller.metrics import ControllerMetrics
    from leaf.service import LeafMetrics
    from rpc.metrics import RpcMetrics

    # One registry per process kind, as in the servers: L0/L1 and the leaf export some names twice.
    holders = [
        RpcMetrics(CollectorRegistry(), tier="l0"),
        ControllerMetrics(CollectorRegistry(), tier="l0"),
        LeafMetrics(CollectorRegistry()),
    ]
    series: dict[str, set[str]] = {}

    def add(name: str, labels: set[str]) -> None:
        series[name] = series[name] & labels if name in series else labels

    for holder in holders:
        for metric in vars(holder).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            # NOTE: _name, _type and _labelnames are prometheus_client internals, read because a
            # labelled metric exposes no samples before its first observation.
            labels = set(metric._labelnames)
            if metric._type == "counter":
                add(f"{metric._name}_total", labels)
            elif metric._type == "histogram":
                add(f"{metric._name}_bucket", labels | {"le"})
                add(f"{metric._name}_count", labels)
                add(f"{metric._name}_sum", labels)
                add(metric._name, labels)
            else:
                add(metric._name, labels)
    return series


def dashboard_targets() -> Iterator[tuple[str, dict[str, Any]]]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target


@pytest.fixture(scope="module")
def series() -> dict[str, set[str]]:
    return exported_series()


def test_required_metrics_exported(series: dict[str, set[str]]) -> None:
    assert REQUIRED_METRICS <= set(series)
    for name in REQUIRED_METRICS:
        assert "tier" in series[name], name


def test_queries_use_exported_series(series: dict[str, set[str]]) -> None:
    for title, target in dashboard_targets():
        names = METRIC_NAME.findall(target["expr"])
        assert names, f"panel {title!r} queries no fmlite metric"
        for name in names:
            assert name in series, f"panel {title!r} queries {name}, which no server exports"


def test_queries_use_exported_labels(series: dict[str, set[str]]) -> None:
    for title, target in dashboard_targets():
        expression = target["expr"]
        available = set.intersection(*(series[name] for name in METRIC_NAME.findall(expression)))
        used = {label.strip() for group in GROUPING.findall(expression) for label in group.split(",")}
        used |= set(MATCHER.findall(expression))
        used |= set(LEGEND_LABEL.findall(target.get("legendFormat", "")))
        assert used <= available, f"panel {title!r} uses labels {sorted(used - available)} that {expression} lacks"


def test_dashboard_covers_required_metrics() -> None:
    queried = {name for _, target in dashboard_targets() for name in METRIC_NAME.findall(target["expr"])}
    base_names = {re.sub(r"_(bucket|count|sum)$", "", name) for name in queried}
    assert REQUIRED_METRICS <= base_names


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())

    assert dashboard["uid"] == "fmlite-platform"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
