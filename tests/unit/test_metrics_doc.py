"""docs/metrics.md lists every exported metric; dashboards and rules use only exported ones."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from tests.support.procs import REPO

pytestmark = pytest.mark.unit

DOC = REPO / "docs" / "metrics.md"
METRIC_RE = re.compile(r"\bgateway_[a-z0-9_]+")


def _metric_modules() -> Iterator[str]:
    """Every module of libs/ and services/ that creates prometheus_client metrics."""
    for root in (REPO / "libs", REPO / "services"):
        for path in root.glob("*/iotgw_*/**/*.py"):
            text = path.read_text()
            if re.search(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(", text) and (
                "prometheus_client" in text
            ):
                package_root = path.parents[len(path.relative_to(root).parts) - 2]
                rel = path.relative_to(package_root).with_suffix("")
                yield ".".join(rel.parts)


def exported() -> dict[str, str]:
    """name as Prometheus sees it (counters with _total) -> type."""
    for module in _metric_modules():
        importlib.import_module(module)
    names: dict[str, str] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("gateway_"):
            continue
        name = family.name + "_total" if family.type == "counter" else family.name
        names[name] = family.type
    return names


def documented() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`(gateway_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def _base(name: str, histograms: set[str]) -> str:
    for suffix in ("_bucket", "_count", "_sum", "_created"):
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


def _dashboard_exprs() -> Iterator[tuple[str, str]]:
    for path in sorted((REPO / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("type") == "prometheus":
                    yield f"{path.name}: {panel['title']}", target["expr"]
    datasources = (REPO / "grafana" / "provisioning" / "datasources").glob("*.yaml")
    for path in datasources:
        for ds in yaml.safe_load(path.read_text())["datasources"]:
            for query in ds.get("jsonData", {}).get("tracesToMetrics", {}).get("queries", []):
                yield f"{path.name}: {query['name']}", query["query"]


def _rule_exprs() -> Iterator[tuple[str, str]]:
    for path in sorted((REPO / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]


def test_every_exported_metric_is_documented() -> None:
    missing = sorted(set(exported()) - set(documented()))
    assert not missing, f"exported but not in docs/metrics.md: {missing}"


def test_every_documented_metric_is_exported_with_its_type() -> None:
    names = exported()
    stale = sorted(set(documented()) - set(names))
    assert not stale, f"in docs/metrics.md but not exported: {stale}"
    wrong = {n: (t, names[n]) for n, t in documented().items() if names[n] != t}
    assert not wrong, f"documented type differs (doc, real): {wrong}"


@pytest.mark.parametrize("source", ["dashboards", "rules"])
def test_dashboards_and_rules_use_only_exported_metrics(source: str) -> None:
    names = exported()
    histograms = {n for n, t in names.items() if t == "histogram"}
    exprs = list(_dashboard_exprs() if source == "dashboards" else _rule_exprs())
    assert exprs
    unknown = {
        f"{where}: {metric}"
        for where, expr in exprs
        for metric in METRIC_RE.findall(expr)
        if _base(metric, histograms) not in names
    }
    assert not unknown, f"used but not exported: {sorted(unknown)}"


def test_the_check_itself_catches_an_unknown_metric(tmp_path: Path) -> None:
    histograms = {"gateway_ingest_to_ack_seconds"}
    assert _base("gateway_ingest_to_ack_seconds_bucket", histograms) in exported()
    assert _base("gateway_no_such_thing_total", histograms) not in exported()
