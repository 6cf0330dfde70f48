"""Uplink outages and crashes with the aws-iot-mqtt sink and the AWS IoT Core stand-in."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.test_aws_iot_mqtt import (
    assert_device_order,
    checker,  # noqa: F401  (fixture)
    post_batches,
    spool_states,
    standin,  # noqa: F401  (fixture)
)
from tests.support.aws_standin import AwsIotStandin, Checker
from tests.support.stack import Stack, wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


@pytest.mark.slow
def test_stand_in_down_30s_under_load_loses_nothing_and_keeps_order(
    gateway_env: dict[str, str],
    tmp_path: Path,
    standin: AwsIotStandin,  # noqa: F811
    checker: Checker,  # noqa: F811
) -> None:
    stack = Stack(
        {
            **gateway_env,
            **standin.sink_env(),
            "IOTGW_MQTT_SINK_CONNECTIONS": "2",
            "IOTGW_SINK_BATCH_MAX_RECORDS": "10",
        },
        tmp_path,
    ).start()
    devices = [f"dev-{i:02d}" for i in range(8)]
    sent = 0
    stop_load = threading.Event()
    errors: list[str] = []

    def load() -> None:
        # ~8 devices x 5 readings every 0.25 s: ~160 readings/s, bounded by count and time.
        nonlocal sent
        seq = 0
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=stack.base_url, timeout=10) as client:
            while not stop_load.is_set() and time.monotonic() < deadline and seq < 20_000:
                try:
                    sent += post_batches(client, devices, 5, start_seq=seq, chunk=5)
                except AssertionError as exc:
                    errors.append(str(exc))
                    return
                seq += 5
                time.sleep(0.25)

    loader = threading.Thread(target=load, daemon=True)
    try:
        loader.start()
        wait_until(lambda: len(checker.ids()) > 100, 30, "delivery before the outage")
        # Pacing is judged while the checker is live: after the restart the broker
        # hands the checker's queued session to it in one burst.
        peaks_before = checker.peak_per_second()
        standin.stop()
        time.sleep(30)
        before_back = len(checker.ids())
        standin.start()
        stop_load.set()
        loader.join(30)
        assert not errors, errors
        wait_until(lambda: len(checker.ids()) >= sent, 120, f"all {sent} records after the outage")
    finally:
        stop_load.set()
        stack.stop()
    envelopes = checker.envelopes()
    assert len({e["id"] for e in envelopes}) == sent
    assert before_back < sent  # the outage really held records back
    assert_device_order(envelopes)
    assert peaks_before and all(p <= 100 for p in peaks_before.values()), peaks_before
    states = spool_states(gateway_env)
    assert states.get(3, 0) == 0 and states.get(2, 0) == sent, states
    assert "unavailable" in stack.forwarder.log_text()


@pytest.mark.slow
def test_forwarder_killed_mid_batch_delivers_everything_with_the_same_ids(
    gateway_env: dict[str, str],
    tmp_path: Path,
    standin: AwsIotStandin,  # noqa: F811
    checker: Checker,  # noqa: F811
) -> None:
    stack = Stack({**gateway_env, **standin.sink_env()}, tmp_path)
    stack.start_ingest()
    try:
        devices = [f"dev-{i}" for i in range(4)]
        with stack.client() as client:
            sent = post_batches(client, devices, 150)
        # Paced at 90 publishes/s, 600 records take ~7 s: kill it in the middle.
        stack.start_forwarder()
        wait_until(lambda: len(checker.ids()) >= 150, 30, "part of the backlog delivered")
        stack.forwarder.kill9()
        partial = len(checker.ids())
        assert partial < sent
        stack.start_forwarder()
        wait_until(lambda: len(checker.ids()) >= sent, 90, f"all {sent} records after kill -9")
    finally:
        stack.stop()
    envelopes = checker.envelopes()
    ids = [e["id"] for e in envelopes]
    assert len(set(ids)) == sent  # at least once, and the same ids on the re-delivery
    assert_device_order(envelopes)
    assert spool_states(gateway_env) == {2: sent}
