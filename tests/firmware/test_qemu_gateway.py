"""The firmware end to end through the gateway: the STM32F405 image in QEMU,
onboarded with `iotgw devices add` and built with the credentials it printed,
publishes over its USART (a TCP socket in QEMU) to the edge Mosquitto; the MQTT
ingest and the forwarder run as processes with the file sink. The outbox holds
the firmware's readings under the registry's tenant and site with consecutive
seqs from 0, and across a broker restart in the middle of the run every seq
the firmware logged as PUBACKed is in the outbox exactly once."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from tests.firmware.support import FirmwareImage, QemuDevice
from tests.support.mosquitto import MosquittoBroker, mqtt_ingest_service
from tests.support.procs import python_service
from tests.support.stack import outbox_records, wait_until

pytestmark = pytest.mark.integration

METRICS = {"temp_c", "humidity_pct", "pressure_hpa", "uptime_s", "battery_v"}


@pytest.fixture
def outbox(broker: MosquittoBroker, gateway_env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """ingest-mqtt and the forwarder (file sink) as processes on this test's broker,
    spool, stream and outbox; yields the outbox directory."""
    env = {**gateway_env, **broker.env(), "IOTGW_MQTT_RECONNECT_MAX_S": "1"}
    ingest = mqtt_ingest_service(env, tmp_path).start()
    forwarder = python_service("iotgw_forwarder", "forwarder", tmp_path, env).start()
    try:
        wait_until(lambda: "subscribing" in ingest.log_text(), 20, "the ingest's subscription")
        yield Path(env["IOTGW_OUTBOX_DIR"])
    finally:
        ingest.stop()
        forwarder.stop()


def device_records(outbox: Path, image: FirmwareImage) -> list[dict[str, Any]]:
    """The outbox's envelopes of this device (there is no other; checked by the caller)."""
    return [r for r in outbox_records(outbox) if r["device_id"] == image.identity.device_id]


def check_envelope(record: dict[str, Any], image: FirmwareImage) -> None:
    """Identity from the registry and the topic, the firmware's body inside."""
    ident = image.identity
    assert (record["tenant"], record["site"], record["device_id"]) == (
        ident.tenant,
        ident.site,
        ident.device_id,
    ), record
    assert record["class"] == "telemetry" and record["source"] == "mqtt", record
    assert set(record["metrics"]) == METRICS, record
    assert record["tags"] == {"fw": "0.1.0", "board": "netduinoplus2-qemu"}, record
    assert isinstance(record["seq"], int), record


@pytest.mark.reliability
def test_firmware_readings_reach_the_outbox_across_a_broker_restart(
    firmware_image: FirmwareImage, broker: MosquittoBroker, outbox: Path, tmp_path: Path
) -> None:
    device = QemuDevice(firmware_image, broker.local_port, tmp_path).start()
    try:
        # Before the restart: what the broker acknowledged is in the outbox, as the device.
        device.wait_until("6 PUBACKs", lambda: len(device.acked_seqs()) >= 6, timeout_s=30)
        acked_first = device.acked_seqs()
        wait_until(
            lambda: set(acked_first) <= {r["seq"] for r in device_records(outbox, firmware_image)},
            30,
            "the first acknowledged seqs in the outbox",
        )
        first = outbox_records(outbox)
        for record in first:
            check_envelope(record, firmware_image)
        first_seqs = sorted(r["seq"] for r in first)
        assert first_seqs == list(range(len(first_seqs)))  # consecutive from 0, no repeat

        # The broker restarts while the device publishes; readings wait in its ring.
        outage_last = device.ride_out_broker_restart(broker)
        acked = device.acked_seqs()
        wait_until(
            lambda: set(acked) <= {r["seq"] for r in device_records(outbox, firmware_image)},
            60,
            "every acknowledged seq in the outbox",
        )
    finally:
        device.stop()
    log = device.log()
    assert "LINK_LOST" in log or "CONNECT_FAILED" in log  # the device noticed the outage
    assert "DROP_OLDEST" not in log  # the outage fit in its ring: nothing evicted
    records = outbox_records(outbox)
    for record in records:
        check_envelope(record, firmware_image)
    counts = Counter(r["seq"] for r in records)
    # Every seq the firmware saw acknowledged, before, during and after the outage,
    # is in the outbox exactly once (re-sends after the reconnect were deduplicated).
    assert set(acked_first) <= set(acked)
    assert all(counts[seq] == 1 for seq in acked), {s: counts[s] for s in acked if counts[s] != 1}
    assert max(counts.values()) == 1
    # Consecutive from 0 through the outage: store-and-forward skipped nothing.
    assert acked == list(range(len(acked)))
    assert sorted(counts) == list(range(len(counts)))
    assert max(acked) >= outage_last + 2


def _publish_on_loopback(
    broker: MosquittoBroker, username: str, password: str, topic: str
) -> tuple[Any, Any]:
    """One MQTT v5 QoS 1 publish on the plaintext loopback listener, as the firmware
    connects there: (CONNACK reason, PUBACK reason or None when not connected)."""
    answers: dict[str, Any] = {}
    done = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.username_pw_set(username, password)

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        answers["connack"] = rc
        if rc.is_failure:
            done.set()
        else:
            c.publish(topic, b'{"seq": 1, "metrics": {"n": 1}}', qos=1)

    def on_publish(c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        answers["puback"] = rc
        done.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect("127.0.0.1", broker.local_port)
    client.loop_start()
    try:
        assert done.wait(10), "no CONNACK/PUBACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return answers["connack"], answers.get("puback")


def test_loopback_listener_holds_the_device_to_its_credentials_and_topics(
    firmware_image: FirmwareImage, broker: MosquittoBroker
) -> None:
    """The listener the firmware uses in QEMU has no TLS but the same password
    file and ACL: the onboarded identity publishes to its own topic only."""
    ident = firmware_image.identity
    connack, puback = _publish_on_loopback(
        broker, ident.username, ident.password, ident.topic("telemetry")
    )
    assert not connack.is_failure and puback is not None and not puback.is_failure
    connack, puback = _publish_on_loopback(
        broker, ident.username, ident.password, f"v1/{ident.tenant}/{ident.site}/other/telemetry"
    )
    assert not connack.is_failure
    assert puback is not None and puback.is_failure  # "not authorized" from the ACL
    connack, _ = _publish_on_loopback(
        broker, ident.username, "not-the-password", ident.topic("telemetry")
    )
    assert connack.is_failure
