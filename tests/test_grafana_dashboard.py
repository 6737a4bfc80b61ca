"""The Grafana dashboard shipped in docs/grafana/ asks only for metrics omnipush exports, and
shows every metric of the pipeline."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Metric

from shared.metrics_endpoint import process_registry
from shared.pipeline_metrics import (
    CallbackMetrics,
    ConnectionMetrics,
    DispatchMetrics,
    RelayMetrics,
    WorkerMetrics,
)

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "omnipush.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
#: PromQL words that look like metric names (functions are told apart by their parenthesis).
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"})
#: The names under which a family's samples are exported, by its type.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def _sample_names(families: Iterable[Metric]) -> set[str]:
    return {f"{family.name}{suffix}" for family in families for suffix in _SUFFIXES[family.type]}


def pipeline_registry() -> CollectorRegistry:
    """A registry with every metric group of the services without HTTP, as they build theirs."""
    registry = process_registry()
    RelayMetrics(registry)
    DispatchMetrics(registry)
    WorkerMetrics("web", registry)
    CallbackMetrics(registry)
    ConnectionMetrics("relay", registry)
    return registry


def exported_names() -> set[str]:
    """Every sample name the API, the gateway (default registry) and the other services serve."""
    import producer_api.metrics  # noqa: F401  (registers the API's own metrics)
    import shared.http_metrics  # noqa: F401
    import ws_gateway.metrics  # noqa: F401

    return _sample_names(REGISTRY.collect()) | _sample_names(pipeline_registry().collect())


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # label values
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\w+", "", bare)  # matchers, ranges, variables
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", bare)  # grouping labels
    bare = re.sub(r"\b\d[\w.]*", "", bare)  # numbers and durations (`0.99`, `5m`)
    tokens = re.findall(r"[A-Za-z_:][\w:]*(?![\w:]|\s*\()", bare)
    return {token for token in tokens if token not in _KEYWORDS}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def test_the_expression_reader_finds_metric_names_only() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (route, le) (rate(omnipush_a_bucket{route="/v1/x"}'
        "[$__rate_interval]))) / on (route) sum(omnipush_b_total offset 5m) > bool 0"
    )
    assert metric_names(expr) == {"omnipush_a_bucket", "omnipush_b_total"}


def test_every_panel_expression_uses_exported_metrics_only(dashboard: dict[str, Any]) -> None:
    exported = exported_names()
    graphs = [panel for panel in panels(dashboard) if panel["type"] != "row"]
    assert graphs
    for panel in graphs:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            used = metric_names(target["expr"])
            assert used, f"{panel['title']}: no metric in {target['expr']!r}"
            unknown = used - exported
            assert not unknown, f"{panel['title']}: {sorted(unknown)} are not exported"


def test_the_datasource_is_a_variable_to_choose_on_import(dashboard: dict[str, Any]) -> None:
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    assert [entry["name"] for entry in dashboard["__inputs"]] == ["DS_PROMETHEUS"]


def test_every_pipeline_and_api_metric_has_a_panel(dashboard: dict[str, Any]) -> None:
    used = {
        name
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        for name in metric_names(target["expr"])
    }
    families = [
        family.name
        for family in pipeline_registry().collect()
        if family.name.startswith("omnipush_")
    ] + ["omnipush_http_requests", "omnipush_http_request_duration_seconds"]
    shown = [name for name in families if any(u.startswith(name + "_") for u in used)]
    assert shown == families
