"""Every dashboard panel query and every rule runs against a real Prometheus and returns data.

The stack (ingest-http + forwarder) runs as processes; Prometheus (Debian's
package) scrapes both every second and evaluates prometheus/rules/ every
second. Traffic is made to cover every panel: several devices, a sequence
gap, a duplicate, reported reconnects, a rejected reading and a dead letter.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.procs import REPO, free_port
from tests.support.prometheus import PrometheusServer
from tests.support.stack import Stack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed"),
]

VARIABLES = {"$__rate_interval": "10s", "$tenant": ".*", "$device": ".*"}


def _panel_queries() -> list[tuple[str, str]]:
    out = []
    for path in sorted((REPO / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("type") == "prometheus":
                    out.append(
                        (f"{path.stem}: {panel['title']} [{target['refId']}]", target["expr"])
                    )
    return out


def _rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in sorted((REPO / "prometheus" / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def _substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


@pytest.fixture
def observed(
    gateway_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[Stack, PrometheusServer]]:
    metrics_port = free_port()
    env = {
        **gateway_env,
        "IOTGW_METRICS_PORT": str(metrics_port),
        "IOTGW_SINK_MAX_RECORD_BYTES": "2048",
    }
    stack = Stack(env, tmp_path).start()
    prom = PrometheusServer(
        tmp_path / "prometheus",
        {
            "ingest-http": [f"127.0.0.1:{stack.http_port}"],
            "forwarder": [f"127.0.0.1:{metrics_port}"],
        },
    )
    try:
        prom.start()
        yield stack, prom
    finally:
        prom.stop()
        stack.stop()


def _drive(stack: Stack) -> int:
    """Traffic that gives every panel something to show; returns records to deliver."""
    delivered = 0
    with stack.client() as http:
        for seq, reconnects in ((1, 1), (2, 1), (5, 3)):  # 3 and 4 missing: a gap of 2
            body = {"seq": seq, "metrics": {"temp_c": 20.0 + seq, "reconnects": reconnects}}
            assert http.post("/v1/ingest/dev-a", json=body).status_code == 202
            delivered += 1
        assert http.post("/v1/ingest/dev-a", json={"seq": 2, "metrics": {"temp_c": 1}}).json()[
            "duplicate"
        ]
        for seq in range(1, 6):
            assert (
                http.post("/v1/ingest/dev-b", json={"seq": seq, "metrics": {"v": seq}}).status_code
                == 202
            )
            delivered += 1
        rejected = http.post("/v1/ingest/dev-b", json={"metrics": {"v": "not a number"}})
        assert rejected.status_code == 400
        big = {"seq": 1, "metrics": {"v": 1}, "payload": {"blob": "x" * 4000}}
        assert http.post("/v1/ingest/dev-big", json=big).status_code == 202  # -> Dead at the sink
    return delivered


def _wait_for_data(
    prom: PrometheusServer, exprs: list[tuple[str, str]], timeout_s: float
) -> dict[str, Any]:
    """Query each until it returns data; the answers of those that never did."""
    pending = dict(exprs)
    failures: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for where, expr in list(pending.items()):
            answer = prom.query(_substitute(expr))
            failures[where] = answer
            if answer["status"] == "success" and answer["data"]["result"]:
                del pending[where]
                failures.pop(where)
        if pending:
            time.sleep(1)
    return {w: failures[w] for w in pending}


def test_every_panel_and_rule_returns_data(observed: tuple[Stack, PrometheusServer]) -> None:
    stack, prom = observed
    delivered = _drive(stack)
    stack.wait_outbox(delivered, timeout_s=30)
    # More readings once Prometheus has scraped the first ones, so that increase() sees them.
    assert not _wait_for_data(prom, [("dead", "gateway_dead_letters_total")], timeout_s=20)
    time.sleep(2)
    with stack.client() as http:
        http.post("/v1/ingest/dev-a", json={"seq": 6, "metrics": {"temp_c": 1, "reconnects": 4}})
        # A second dead letter once the counter is scraped: increase() sees it.
        big = {"seq": 2, "metrics": {"v": 1}, "payload": {"blob": "x" * 4000}}
        assert http.post("/v1/ingest/dev-big", json=big).status_code == 202

    panels = _panel_queries()
    recordings = [(f"record {r['record']}", r["record"]) for r in _rules() if "record" in r]
    assert len(panels) >= 20 and len(recordings) >= 8
    missing = _wait_for_data(prom, panels + recordings, timeout_s=60)
    assert not missing, json.dumps(missing, indent=1)[:4000]

    # Alert expressions: each parses and evaluates without error, and every series
    # it reads (metrics and recorded series) has data. Firing is the unit tests' job.
    alerts = [r for r in _rules() if "alert" in r]
    for rule in alerts:
        answer = prom.query(rule["expr"])
        assert answer["status"] == "success", (rule["alert"], answer)
    inputs = {
        name for rule in alerts for name in re.findall(r"\b(gateway[:_][a-z0-9_:]+)", rule["expr"])
    }
    missing = _wait_for_data(prom, [(n, n) for n in sorted(inputs)], timeout_s=20)
    assert not missing, sorted(missing)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        groups = prom.api("rules")["groups"]
        health = {
            r["name"]: (r["health"], r.get("lastError", "")) for g in groups for r in g["rules"]
        }
        if len(health) == len(_rules()) and all(h == "ok" for h, _ in health.values()):
            break
        time.sleep(1)
    assert len(health) == len(_rules())
    assert all(h == "ok" for h, _ in health.values()), health
    # The dead letter made its alert fire: the rules see what the services export.
    deadline = time.monotonic() + 20
    firing: set[str] = set()
    while "GatewayDeadLetters" not in firing and time.monotonic() < deadline:
        firing = {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]}
        time.sleep(1)
    if "GatewayDeadLetters" not in firing:
        pytest.fail(
            json.dumps(
                [
                    prom.query("gateway:dead_letters:increase10m"),
                    prom.query("increase(gateway_dead_letters_total[10m])"),
                    [
                        g["rules"]
                        for g in prom.api("rules")["groups"]
                        if g["name"] == "gateway-alerts"
                    ],
                ]
            )
        )


def test_latency_histogram_has_exemplars_only_with_traces(
    observed: tuple[Stack, PrometheusServer],
) -> None:
    """Without tracing no exemplar is attached (no dangling trace ids)."""
    stack, _prom = observed
    with stack.client() as http:
        assert (
            http.post("/v1/ingest/dev-x", json={"seq": 1, "metrics": {"v": 1}}).status_code == 202
        )
    stack.wait_outbox(1)
    text = stack.client().get("/metrics", headers={"Accept": "application/openmetrics-text"}).text
    assert "# EOF" in text  # OpenMetrics exposition negotiated
    assert "trace_id" not in text
