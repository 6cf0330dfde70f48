"""The STM32F405 image in QEMU (netduinoplus2) publishing over its USART to the
project's edge Mosquitto (registry-generated password and ACL, the device
onboarded with `iotgw devices add`): topics, consecutive seqs and valid
bodies arrive; across a broker restart nothing the firmware saw acknowledged
is lost, and readings taken while the broker was down follow after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from iotgw_core.validation import validate_reading

from tests.firmware.support import (
    TOPIC_RE,
    FirmwareImage,
    QemuDevice,
    Subscriber,
    body_rule_violations,
)
from tests.support.mosquitto import MosquittoBroker

pytestmark = pytest.mark.integration


def check_messages(sub: Subscriber, image: FirmwareImage) -> list[int]:
    """Every message: the device's telemetry topic and a valid body. Returns the seqs."""
    seqs = []
    for msg in sub.snapshot():
        assert msg.topic == image.identity.topic("telemetry"), msg.topic
        assert TOPIC_RE.match(msg.topic)
        body = json.loads(msg.payload)
        assert body_rule_violations(body) == [], msg.payload
        validate_reading(body)
        assert set(body["metrics"]) == {
            "temp_c",
            "humidity_pct",
            "pressure_hpa",
            "uptime_s",
            "battery_v",
        }
        assert body["tags"] == {"fw": "0.1.0", "board": "netduinoplus2-qemu"}
        seqs.append(body["seq"])
    return seqs


def test_image_fits_its_budget(firmware_image: FirmwareImage) -> None:
    assert firmware_image.elf.exists()
    assert 0 < firmware_image.flash_bytes <= firmware_image.flash_budget == 64 * 1024
    assert 0 < firmware_image.ram_bytes <= firmware_image.ram_budget == 16 * 1024


def test_telemetry_reaches_the_broker(
    firmware_image: FirmwareImage, broker: MosquittoBroker, subscriber: Subscriber, tmp_path: Path
) -> None:
    device = QemuDevice(firmware_image, broker.local_port, tmp_path).start()
    try:
        device.wait_until("8 PUBACKs", lambda: len(device.acked_seqs()) >= 8, timeout_s=30)
        acked = device.acked_seqs()
        device.wait_until(
            "the subscriber to see every acked seq",
            lambda: set(acked) <= set(subscriber.seqs()),
            timeout_s=10,
        )
    finally:
        device.stop()
    assert acked == list(range(len(acked)))  # consecutive from 0, in order, no repeats
    seqs = check_messages(subscriber, firmware_image)
    assert seqs[: len(acked)] == acked
    assert "CONNECTED count=1" in device.log()
    assert "DROP_OLDEST" not in device.log()


@pytest.mark.reliability
@pytest.mark.slow
def test_broker_restart_loses_nothing_acked(
    firmware_image: FirmwareImage, broker: MosquittoBroker, subscriber: Subscriber, tmp_path: Path
) -> None:
    device = QemuDevice(firmware_image, broker.local_port, tmp_path).start()
    try:
        device.wait_until("5 PUBACKs", lambda: len(device.acked_seqs()) >= 5, timeout_s=30)
        # Readings go on while the broker is away: they wait in the ring buffer.
        acked_before = device.acked_seqs()
        device.ride_out_broker_restart(broker)
        acked = device.acked_seqs()
        device.wait_until(
            "the subscriber to see every acked seq",
            lambda: set(acked) <= set(subscriber.seqs()),
            timeout_s=15,
        )
    finally:
        device.stop()
    log = device.log()
    assert "LINK_LOST" in log or "CONNECT_FAILED" in log  # it noticed the outage
    assert "DROP_OLDEST" not in log  # the outage fit in the ring buffer
    # Nothing acknowledged is lost: every acked seq reached the subscriber.
    received = check_messages(subscriber, firmware_image)
    assert set(acked) <= set(received)
    assert set(acked_before) <= set(received)
    # The firmware's acks are in seq order and cover every reading up to the
    # last one acked, outage included: store-and-forward, nothing skipped.
    assert acked == sorted(acked)
    assert set(acked) == set(range(max(acked) + 1))
    # At-least-once: re-sends repeat a seq, never reorder first arrivals.
    first_seen = list(dict.fromkeys(received))
    assert first_seen == sorted(first_seen)


@pytest.mark.reliability
def test_seq_survives_a_warm_reset(
    firmware_image: FirmwareImage, broker: MosquittoBroker, subscriber: Subscriber, tmp_path: Path
) -> None:
    device = QemuDevice(firmware_image, broker.local_port, tmp_path).start()
    try:
        device.wait_until("4 PUBACKs", lambda: len(device.acked_seqs()) >= 4, timeout_s=30)
        device.warm_reset()
        device.wait_until("a second boot", lambda: len(device.boots()) >= 2, timeout_s=10)
        sampled_before = device.sampled_seqs()
        first_after = device.boots()[1]
        device.wait_until(
            "3 PUBACKs after the reset",
            lambda: len([s for s in device.acked_seqs() if s >= first_after]) >= 3,
            timeout_s=30,
        )
        acked = device.acked_seqs()
        device.wait_until(
            "the subscriber to see every acked seq",
            lambda: set(acked) <= set(subscriber.seqs()),
            timeout_s=10,
        )
    finally:
        device.stop()
    boots = device.boots()
    assert boots[0] == 0
    # The image is built with SEQ_LEASE=1: the store resumes right after the
    # last seq used before the reset. (+2 if the reset fell between persisting
    # a seq and logging its SAMPLE line; samples after the reset may already
    # be in the log, hence the filter.)
    last_before = max(s for s in sampled_before if s < first_after)
    assert last_before + 1 <= first_after <= last_before + 2
    after = [s for s in acked if s >= first_after]
    assert after == list(range(first_after, first_after + len(after)))
    received = check_messages(subscriber, firmware_image)
    assert set(acked) <= set(received)
