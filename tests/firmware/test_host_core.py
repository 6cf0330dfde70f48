"""The portable firmware core, built for the host with gcc: its C unit tests,
and envelope bodies it emits checked against the gateway's validation."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from iotgw_core.validation import validate_reading

from tests.firmware.support import COUNTS_RE, body_rule_violations, make

pytestmark = pytest.mark.unit

SUITES = (
    "envelope:",
    "topic:",
    "seqstore:",
    "ring:",
    "backoff:",
    "power:",
    "mqtt:",
    "esp_at:",
    "device:",
)


@pytest.fixture(scope="module")
def host_build(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    build = tmp_path_factory.mktemp("fw-host")
    return build, make("host-test", f"BUILD={build}")


def test_host_unit_tests_pass(host_build: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, result = host_build
    output = result.stdout + result.stderr
    counts = COUNTS_RE.findall(result.stdout)
    assert counts, f"the host test runner printed no 'N passed, N failed' line:\n{output[-3000:]}"
    passed, failed = map(int, counts[-1])
    assert failed == 0, f"{failed} host tests failed:\n{output[-5000:]}"
    assert result.returncode == 0, output[-3000:]
    assert passed >= 40, f"only {passed} host tests ran"
    for suite in SUITES:  # every area of the core is covered by the run
        assert f"ok   {suite}" in result.stdout, f"no passing test of {suite}"


def test_emitted_bodies_pass_gateway_validation(
    host_build: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    build, result = host_build
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    out = subprocess.run(
        [str(build / "host" / "sample_bodies")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert len(lines) >= 62, out[-2000:]
    seqs = []
    for line in lines:
        body = json.loads(line)
        assert body_rule_violations(body) == [], line
        reading = validate_reading(body)  # the gateway's own rules; raises on a violation
        assert reading.seq == body["seq"]
        seqs.append(body["seq"])
    assert seqs[:60] == list(range(60))  # the synthetic sensor's bodies, in order
    edge = json.loads(lines[60])
    assert len(edge["metrics"]) == 32 and len(edge["tags"]) == 16
    assert edge["seq"] == 2**63 - 1
    assert all(len(v) == 64 for v in edge["tags"].values())
    assert '"' in "".join(edge["tags"].values()) and "\\" in "".join(edge["tags"].values())
