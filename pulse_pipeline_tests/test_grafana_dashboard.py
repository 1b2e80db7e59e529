"""deploy/grafana/pulse-dashboard.json: a Grafana dashboard whose queries name only metrics that
core/metrics.py defines, with a panel for each of them, and PromQL a real Prometheus accepts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from pulse_pipeline.core.metrics import METRICS
from pulse_pipeline_tests.conftest import PROJECT
from pulse_pipeline_tests.prometheus_servers import Prometheus, PrometheusStack

DASHBOARD = PROJECT / "deploy" / "grafana" / "pulse-dashboard.json"

# Words of PromQL that are not metric names: operators, modifiers and literals.
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "inf", "nan", "atan2",
}  # fmt: skip
# Grafana's variables in a query, with a value Prometheus parses in their place.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$family": ".*"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside label matchers, strings,
    durations and grouping clauses, not followed by `(` (a function or an aggregation), and not
    PromQL's own words. `{__name__="x"}` selectors count too."""
    names = set(re.findall(r'__name__\s*=~?\s*"([^"]+)"', expr))
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries: [5m], [$__range], [1h:1m]
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_WORDS or re.fullmatch(r"\d+\w*", word):
            continue
        names.add(word)
    return names


def panels(items: list[dict]) -> Iterator[dict]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, rows' panels included."""
    return [
        (panel.get("title", ""), target["expr"])
        for panel in panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_metric_names_are_found_in_promql():
    expr = (
        'time() - max by (family, sensor) (sensor_last_tick_timestamp_seconds{family=~"$family", job!="x"}) '
        '+ on(family) group_left sum without (status) (rate(training_jobs_total{status="fail"}[$__rate_interval] '
        'offset 1h)) / ignoring(metric) nonexistent_metric and {__name__="annotation_backlog"} > bool 0.5e3'
    )
    assert metric_names(expr) == {
        "sensor_last_tick_timestamp_seconds", "training_jobs_total", "nonexistent_metric", "annotation_backlog",
    }  # fmt: skip
    assert metric_names("sum(rate(x:recorded_rule[5m])) * 100") == {"x:recorded_rule"}


def test_every_query_names_only_metrics_that_exist_and_every_metric_has_a_panel(dashboard):
    found = expressions(dashboard)
    assert len(found) >= len(METRICS)
    unknown = {(title, name) for title, expr in found for name in metric_names(expr) if name not in METRICS}
    assert not unknown, f"queries name metrics core/metrics.py does not define: {sorted(unknown)}"
    used = {name for _, expr in found for name in metric_names(expr)}
    assert used == set(METRICS), f"metrics without a panel: {sorted(set(METRICS) - used)}"
    # Counters are read through increase()/rate(), never as raw totals that reset with the Pushgateway.
    for title, expr in found:
        for name in metric_names(expr):
            if METRICS[name].kind == "counter":
                assert re.search(rf"(increase|rate)\(\s*{name}\b", expr), (title, expr)


def test_the_dashboard_is_one_grafana_can_import(dashboard):
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert (
            set(panel["gridPos"]) == {"h", "w", "x", "y"}
            and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        )
        assert panel["targets"] and panel.get("description"), panel["title"]


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Prometheus]:
    with PrometheusStack() as stack:
        yield stack.prometheus


def test_a_real_prometheus_accepts_every_query(dashboard, prometheus):
    for title, expr in expressions(dashboard):
        promql = expr
        for variable, stand_in in GRAFANA_VARIABLES.items():
            promql = promql.replace(variable, stand_in)
        assert "$" not in promql, (title, expr)  # a Grafana variable this test does not know
        prometheus.query(promql)  # raises with Prometheus's parse error
