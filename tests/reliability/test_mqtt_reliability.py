"""MQTT ingest under crashes: PUBACK only after commit, broker restart, kill -9 under load."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_mqtt_ingest import spool_bodies, start_ingest
from tests.support.mosquitto import DevicePublisher, MosquittoBroker
from tests.support.procs import Managed
from tests.support.stack import outbox_records, wait_until

pytestmark = [pytest.mark.reliability]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    running = MosquittoBroker(tmp_path / "broker").start()
    yield running
    running.stop()


@pytest.fixture
def mqtt_env(gateway_env: dict[str, str], broker: MosquittoBroker) -> dict[str, str]:
    return {**gateway_env, **broker.env(), "IOTGW_MQTT_RECONNECT_MAX_S": "1"}


def forwarder(env: dict[str, str], log_dir: Path) -> Managed:
    return Managed("forwarder", [sys.executable, "-m", "iotgw_forwarder"], log_dir, env)


def test_killed_between_receipt_and_commit_the_broker_delivers_again(
    broker: MosquittoBroker, mqtt_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**mqtt_env, "IOTGW_LOG_LEVEL": "DEBUG"}  # the connection logs each PUBLISH and PUBACK
    creds = broker.add_device("d-crash")
    ingest = start_ingest(env, tmp_path, "ingest-1")
    # Hold the spool's write lock: the ingest receives the message but cannot commit it.
    blocker = sqlite3.connect(env["IOTGW_SPOOL_PATH"], isolation_level=None, timeout=30)
    blocker.execute("BEGIN IMMEDIATE")
    pub = DevicePublisher(broker, creds).start()
    try:
        pub.publish(1)
        assert pub.wait_acked(1)  # the broker has it
        wait_until(
            lambda: "Received PUBLISH (d0, q1" in ingest.log_text(), 20, "the ingest's receipt"
        )
        time.sleep(0.3)  # the batch is now waiting on the spool lock
        assert "Sending PUBACK" not in ingest.log_text()
        ingest.kill9()
        blocker.execute("ROLLBACK")
        blocker.close()
        assert spool_bodies(env) == []  # received, never committed, never acknowledged
        again = start_ingest(env, tmp_path, "ingest-2")
        try:
            wait_until(lambda: len(spool_bodies(env)) == 1, 20, "the redelivered record")
            # The broker sent it again, flagged as a duplicate delivery (d1).
            assert "Received PUBLISH (d1, q1" in again.log_text()
            wait_until(lambda: "Sending PUBACK" in again.log_text(), 10, "the PUBACK")
            assert spool_bodies(env)[0]["seq"] == 1
        finally:
            again.stop()
    finally:
        pub.stop()
        ingest.kill9()


@pytest.mark.slow
def test_three_devices_2000_each_with_a_broker_restart(
    broker: MosquittoBroker, mqtt_env: dict[str, str], tmp_path: Path
) -> None:
    """Every message the broker acknowledged to a device is in the outbox exactly once."""
    per_device = 2000
    ingest = start_ingest(mqtt_env, tmp_path)
    fwd = forwarder(mqtt_env, tmp_path).start()
    pubs = [DevicePublisher(broker, broker.add_device(f"d-{i}")).start() for i in range(3)]
    try:
        for seq in range(per_device):
            for pub in pubs:
                pub.publish(seq)
            if seq == per_device // 2:
                broker.restart()  # clean restart: sessions and queues from persistence
            elif seq % 100 == 0:
                time.sleep(0.01)  # a little pacing, as devices have
        # paho re-sends what was in flight when the connection dropped; wait for the PUBACKs.
        for pub in pubs:
            pub.wait_acked(per_device, timeout_s=60)
        acked = {(f"d-{i}", seq) for i, pub in enumerate(pubs) for seq in pub.acked}
        assert len(acked) >= per_device * 3 * 0.9, len(acked)  # the restart cost only a few
        outbox = Path(mqtt_env["IOTGW_OUTBOX_DIR"])

        def delivered() -> set[tuple[str, int]]:
            return {(r["device_id"], r["seq"]) for r in outbox_records(outbox)}

        wait_until(lambda: acked <= delivered(), 120, "every acknowledged message in the outbox")
        counts = Counter((r["device_id"], r["seq"]) for r in outbox_records(outbox))
        assert all(counts[key] == 1 for key in acked), [k for k in acked if counts[k] != 1][:5]
    finally:
        for pub in pubs:
            pub.stop()
        ingest.stop()
        fwd.stop()


@pytest.mark.slow
def test_ingest_killed_under_load_loses_nothing(
    broker: MosquittoBroker, mqtt_env: dict[str, str], tmp_path: Path
) -> None:
    total = 3000
    creds = broker.add_device("d-load")
    ingest = start_ingest(mqtt_env, tmp_path, "ingest-1")
    fwd = forwarder(mqtt_env, tmp_path).start()
    pub = DevicePublisher(broker, creds).start()
    restarted: Managed | None = None
    try:
        for seq in range(total):
            pub.publish(seq)
            if seq == total // 3:
                wait_until(lambda: len(spool_bodies(mqtt_env)) > 0, 20, "records flowing")
                ingest.kill9()  # mid-stream: some received, some committed, some acked
            if seq == 2 * total // 3:
                restarted = start_ingest(mqtt_env, tmp_path, "ingest-2")
        assert pub.wait_acked(total, timeout_s=60)
        outbox = Path(mqtt_env["IOTGW_OUTBOX_DIR"])
        wait_until(
            lambda: {r["seq"] for r in outbox_records(outbox)} >= set(range(total)),
            120,
            "every message in the outbox",
        )
        counts = Counter(r["seq"] for r in outbox_records(outbox))
        assert set(counts) == set(range(total))
        assert max(counts.values()) == 1  # seq deduplicates the redeliveries
    finally:
        pub.stop()
        ingest.kill9()
        if restarted is not None:
            restarted.stop()
        fwd.stop()
