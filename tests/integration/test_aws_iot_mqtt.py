"""The aws-iot-mqtt sink against a real mosquitto standing in for AWS IoT Core (mTLS, ACL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.aws_standin import AwsIotStandin, Checker
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[AwsIotStandin]:
    """The AWS IoT Core stand-in on a free port."""
    server = AwsIotStandin(tmp_path / "standin").start()
    yield server
    server.stop()


@pytest.fixture
def checker(standin: AwsIotStandin) -> Iterator[Checker]:
    """A subscriber to dt/# at the stand-in."""
    sub = Checker(standin).start()
    yield sub
    sub.stop()


def post_batches(
    client: httpx.Client, devices: list[str], per_device: int, start_seq: int = 0, chunk: int = 50
) -> int:
    """POST ``per_device`` readings of every device (in seq order, in chunks); returns the count."""
    sent = 0
    for first in range(start_seq, start_seq + per_device, chunk):
        for device in devices:
            last = min(first + chunk, start_seq + per_device)
            body = [{"seq": s, "metrics": {"v": float(s)}} for s in range(first, last)]
            response = client.post(f"/v1/ingest/{device}/batch", json=body)
            assert response.status_code == 202, response.text
            sent += len(body)
    return sent


def spool_states(env: dict[str, str]) -> dict[int, int]:
    """Records by state number straight from the spool file."""
    with sqlite3.connect(env["IOTGW_SPOOL_PATH"]) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM records GROUP BY state").fetchall())


def dead_rows(env: dict[str, str]) -> list[tuple[str, str]]:
    """(id, last_error) of every Dead record."""
    with sqlite3.connect(env["IOTGW_SPOOL_PATH"]) as conn:
        return conn.execute("SELECT id, last_error FROM records WHERE state=3").fetchall()


def assert_device_order(envelopes: list[dict[str, Any]]) -> None:
    """The first arrival of each record follows the device's seq order."""
    seen: set[str] = set()
    last: dict[str, int] = {}
    for env in envelopes:
        if env["id"] in seen:
            continue
        seen.add(env["id"])
        device = env["device_id"]
        assert env["seq"] > last.get(device, -1), f"{device}: seq {env['seq']} after {last[device]}"
        last[device] = env["seq"]


def make_stack(gateway_env: dict[str, str], tmp_path: Path, **extra: str) -> Stack:
    """ingest-http + forwarder with an aws-iot-mqtt sink."""
    return Stack({**gateway_env, **extra}, tmp_path)


def test_happy_path_topics_payloads_and_pacing(
    gateway_env: dict[str, str], tmp_path: Path, standin: AwsIotStandin, checker: Checker
) -> None:
    stack = make_stack(
        gateway_env,
        tmp_path,
        **standin.sink_env(),
        IOTGW_TENANT="acme",
        IOTGW_SITE="aal",
    ).start()
    try:
        devices = [f"stm32-{i:02d}" for i in range(5)]
        with stack.client() as client:
            sent = post_batches(client, devices, 60)
        wait_until(lambda: len(checker.ids()) >= sent, 60, f"{sent} records at the stand-in")
    finally:
        stack.stop()
    envelopes = checker.envelopes()
    assert len({e["id"] for e in envelopes}) == sent
    for msg in checker.snapshot():
        env = msg.envelopes()[0]
        assert msg.topic == f"dt/acme/aal/{env['device_id']}/telemetry"
        assert env["metrics"] == {"v": float(env["seq"])}
    assert_device_order(envelopes)
    peaks = checker.peak_per_second()
    assert peaks and all(0 < peak <= 100 for peak in peaks.values()), peaks
    assert spool_states(gateway_env) == {2: sent}


def test_oversize_record_is_dead_with_its_reason(
    gateway_env: dict[str, str], tmp_path: Path, standin: AwsIotStandin, checker: Checker
) -> None:
    stack = make_stack(
        gateway_env, tmp_path, **standin.sink_env(), IOTGW_HTTP_MAX_BODY_BYTES="400000"
    ).start()
    try:
        with stack.client() as client:
            big = client.post(
                "/v1/ingest/dev-big", json={"seq": 1, "payload": {"blob": "x" * 140_000}}
            )
            assert big.status_code == 202
            small = client.post("/v1/ingest/dev-big", json={"seq": 2, "metrics": {"v": 1}})
            assert small.status_code == 202
        wait_until(lambda: small.json()["id"] in checker.ids(), 30, "the small record delivered")
        wait_until(lambda: len(dead_rows(gateway_env)) == 1, 30, "the big record Dead")
    finally:
        stack.stop()
    ((dead_id, reason),) = dead_rows(gateway_env)
    assert dead_id == big.json()["id"]
    assert reason.startswith("payload_too_large:")
    assert big.json()["id"] not in checker.ids()
    # The broker never saw an oversize packet: the sink refused it before sending.
    assert "too large" not in standin.log_text().lower()


def test_wrong_certificate_gives_a_clear_error_and_loses_nothing(
    gateway_env: dict[str, str], tmp_path: Path, standin: AwsIotStandin, checker: Checker
) -> None:
    stack = make_stack(gateway_env, tmp_path, **standin.sink_env(rogue=True)).start()
    try:
        with stack.client() as client:
            sent = post_batches(client, ["dev-a", "dev-b"], 20)
            wait_until(
                lambda: "TLS handshake" in stack.forwarder.log_text(), 30, "the TLS error logged"
            )

            def sink_health() -> dict[str, Any]:
                sink: dict[str, Any] = client.get("/healthz").json()["components"]["sink"]
                return sink

            wait_until(lambda: sink_health()["status"] == "unavailable", 30, "sink unavailable")
            health = {"components": {"sink": sink_health()}}
        assert "IOTGW_MQTT_SINK_CERT_FILE" in stack.forwarder.log_text()
        assert health["components"]["sink"]["status"] == "unavailable"
        assert "TLS handshake" in health["components"]["sink"]["sink_error"]
        assert checker.ids() == set()
        assert spool_states(gateway_env).get(3, 0) == 0  # nothing Dead, nothing spent
        stack.forwarder.stop()
        # With the thing's own certificate every record goes through.
        stack.forwarder.env.update(standin.sink_env())
        stack.start_forwarder()
        wait_until(lambda: len(checker.ids()) >= sent, 60, "every record after the fix")
    finally:
        stack.stop()
    assert spool_states(gateway_env) == {2: sent}


def test_topic_outside_the_acl_is_dead_as_not_authorized(
    gateway_env: dict[str, str], tmp_path: Path, standin: AwsIotStandin, checker: Checker
) -> None:
    stack = make_stack(
        gateway_env,
        tmp_path,
        **standin.sink_env(),
        IOTGW_SINK_TOPIC_TEMPLATE="other/{tenant}/{device_id}",
    ).start()
    try:
        with stack.client() as client:
            response = client.post("/v1/ingest/dev-x", json={"seq": 1, "metrics": {"v": 1}})
        assert response.status_code == 202
        wait_until(lambda: len(dead_rows(gateway_env)) == 1, 30, "the record Dead")
    finally:
        stack.stop()
    ((_, reason),) = dead_rows(gateway_env)
    assert reason.startswith("not_authorized:")


@pytest.mark.slow
def test_pool_and_batching_stay_under_the_connection_limits(
    gateway_env: dict[str, str], tmp_path: Path, standin: AwsIotStandin, checker: Checker
) -> None:
    stack = make_stack(
        gateway_env,
        tmp_path,
        **standin.sink_env(),
        IOTGW_MQTT_SINK_CONNECTIONS="3",
        IOTGW_SINK_BATCH_MAX_RECORDS="5",
    )
    stack.start_ingest()
    try:
        devices = [f"dev-{i:02d}" for i in range(12)]
        with stack.client() as client:
            sent = post_batches(client, devices, 100)
        stack.start_forwarder()
        wait_until(lambda: len(checker.ids()) >= sent, 90, f"{sent} records")
    finally:
        stack.stop()
    messages = checker.snapshot()
    connections = {m.connection for m in messages}
    assert len(connections) == 3, connections
    assert any(len(m.envelopes()) > 1 for m in messages)
    assert all(len(m.payload) <= 128 * 1024 for m in messages)
    peaks = checker.peak_per_second()
    assert all(peak <= 100 for peak in peaks.values()), peaks
    assert_device_order(checker.envelopes())
