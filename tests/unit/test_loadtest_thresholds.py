"""The load test's verdict from Locust's CSV, and that locust stays out of `make test`.

Locust itself is installed only by `make loadtest` (dependency group
``loadtest``); these tests need none of it.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from loadtest.run import parse_args
from loadtest.thresholds import Limits, expected_records, judge, with_delivery

pytestmark = [pytest.mark.unit]

REPO = Path(__file__).resolve().parents[2]
HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def _csv(tmp_path: Path, rows: list[tuple[str, str, int, int, float]]) -> Path:
    """A stats CSV in Locust's column layout: (type, name, requests, failures, p95)."""
    lines = [HEADER]
    for kind, name, requests, failures, p95 in rows:
        lines.append(
            f"{kind},{name},{requests},{failures},3,3.5,1,60,100,50.0,0.0,"
            f"3,4,4,4,5,{p95},9,11,50,50,60"
        )
    path = tmp_path / "phase_stats.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_clean_run_passes(tmp_path: Path) -> None:
    path = _csv(tmp_path, [("POST", "single", 900, 0, 12), ("", "Aggregated", 1000, 3, 12)])
    verdict = judge(path, Limits(max_failure_ratio=0.01, max_p95_ms=500), "http")
    assert verdict.ok, verdict.problems
    assert (verdict.requests, verdict.failures, verdict.p95_ms) == (1000, 3, 12.0)
    assert "ok" in verdict.line()


def test_failure_ratio_and_p95_over_the_limit_fail(tmp_path: Path) -> None:
    path = _csv(tmp_path, [("", "Aggregated", 1000, 20, 800)])
    verdict = judge(path, Limits(max_failure_ratio=0.01, max_p95_ms=500))
    assert not verdict.ok
    assert any("failure ratio 2.00%" in p for p in verdict.problems)
    assert any("p95 800 ms > 500 ms" in p for p in verdict.problems)


def test_too_few_requests_or_no_file_fail(tmp_path: Path) -> None:
    few = judge(_csv(tmp_path, [("", "Aggregated", 10, 0, 5)]), Limits(min_requests=100))
    assert not few.ok and "only 10 requests" in few.problems[0]
    missing = judge(tmp_path / "absent_stats.csv", Limits())
    assert not missing.ok


def test_records_expected_from_successes_and_delivery_check(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        [
            ("POST", "single", 100, 2, 5),  # 98 records
            ("POST", "batch", 10, 0, 5),  # 100 records
            ("POST", "batch_mixed", 5, 0, 5),  # 40 records
            ("POST", "invalid", 50, 0, 5),  # none: refused by design
            ("", "Aggregated", 165, 2, 5),
        ],
    )
    assert expected_records("http", path) == 238
    verdict = judge(path, Limits(max_failure_ratio=0.05, min_requests=1))
    assert with_delivery(verdict, 238, 238).ok
    short = with_delivery(verdict, 238, 200)
    assert not short.ok and "200 records delivered < 238 acknowledged" in short.problems


def test_run_arguments_are_bounded() -> None:
    args = parse_args(["--users", "5", "--duration", "10", "--phases", "mqtt"])
    assert (args.users, args.duration, args.phases) == (5, 10, "mqtt")
    for bad in (["--users", "0"], ["--users", "1000"], ["--duration", "3600"], ["--phases", "x"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_locust_is_only_in_its_own_dependency_group() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    groups = project["dependency-groups"]
    assert any(dep.startswith("locust") for dep in groups["loadtest"])
    assert not any(dep.startswith("locust") for dep in groups["dev"])
    assert "loadtest" not in project["tool"]["uv"].get("default-groups", [])


@pytest.mark.parametrize("name", ["locustfile_http.py", "locustfile_mqtt.py"])
def test_locustfiles_define_their_users(name: str) -> None:
    tree = ast.parse((REPO / "loadtest" / name).read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    bases = {ast.unparse(b) for c in classes.values() for b in c.bases}
    assert bases & {"HttpUser", "MqttUser"}
    imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    if name == "locustfile_mqtt.py":
        assert "locust.contrib.mqtt" in imports
