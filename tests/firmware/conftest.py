"""Fixtures of the firmware tests: the project's edge broker, the device onboarded
with `iotgw devices add` and an image built with the credentials it printed,
and a persistent subscriber. Markers come from the root pyproject.toml."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from iotgw_cli.broker import INGEST_USER

from tests.firmware.support import (
    DeviceIdentity,
    FirmwareImage,
    Subscriber,
    build_image,
    onboard,
)
from tests.support.mosquitto import MosquittoBroker


@pytest.fixture(scope="session")
def toolchain() -> None:
    """What the QEMU tests need on the PATH."""
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm", "mosquitto", "mosquitto_passwd"):
        assert shutil.which(tool), f"{tool} missing: run firmware/stm32/tools/ensure-toolchain.sh"


@pytest.fixture
def broker(tmp_path: Path, toolchain: None) -> Iterator[MosquittoBroker]:
    """The edge broker (edge config, registry-generated password and ACL files), started."""
    server = MosquittoBroker(tmp_path / "broker", cert_listener=False).start()
    yield server
    server.stop()


@pytest.fixture
def firmware_image(broker: MosquittoBroker, tmp_path: Path) -> FirmwareImage:
    """The device registered in the broker's registry (the CLI, as an operator does),
    and the QEMU image built with that identity: 250 ms sample period, seq lease 1.
    About a second of build: each test's registry gives the device a new password."""
    identity = onboard(broker, DeviceIdentity())
    return build_image(tmp_path / "fw-build", identity, sample_ms=250)


@pytest.fixture
def subscriber(broker: MosquittoBroker) -> Iterator[Subscriber]:
    """Subscribed to v1/# at QoS 1 on a persistent session before the device starts
    (as the gateway's ingest user, the one service user the edge broker has)."""
    sub = Subscriber(broker.local_port, INGEST_USER, broker.ingest_password).start()
    yield sub
    sub.stop()
