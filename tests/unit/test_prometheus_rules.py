"""The SLO rules of prometheus/rules/ with Debian's promtool (`check` and unit tests)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support.procs import REPO

pytestmark = pytest.mark.unit

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: `make deps` installs Debian's prometheus"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


@needs_promtool
def test_rule_files_are_valid() -> None:
    rules = sorted(str(p) for p in (REPO / "prometheus" / "rules").glob("*.yml"))
    assert rules
    out = promtool("check", "rules", *rules)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    tests = sorted(str(p) for p in (REPO / "prometheus" / "tests").glob("*_test.yml"))
    assert tests
    out = promtool("test", "rules", *tests)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_unit_tests_cover_every_alert() -> None:
    import yaml

    alerts = {
        rule["alert"]
        for path in (REPO / "prometheus" / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tested = {
        case["alertname"]
        for path in (REPO / "prometheus" / "tests").glob("*_test.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    # Alerts whose unit test is the same expression as a tested sibling's.
    assert alerts - tested <= {"GatewaySpoolBackpressure"}, alerts - tested


@needs_promtool
def test_compose_prometheus_config_is_valid(tmp_path: object) -> None:
    out = promtool("check", "config", "--syntax-only", str(REPO / "prometheus" / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
