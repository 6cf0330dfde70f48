"""Fixtures of the firmware tests: the QEMU image (built once), a password/ACL
broker and a persistent subscriber per test. Markers come from the root
pyproject.toml."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.firmware.support import (
    DeviceIdentity,
    FirmwareImage,
    PasswordBroker,
    Subscriber,
    build_image,
)

SUBSCRIBER = ("fw-test-reader", "reader-secret")


@pytest.fixture(scope="session")
def firmware_image(tmp_path_factory: pytest.TempPathFactory) -> FirmwareImage:
    """The QEMU image with a test identity, a fast sample period and seq lease 1."""
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm", "mosquitto", "mosquitto_passwd"):
        assert shutil.which(tool), f"{tool} missing: run firmware/stm32/tools/ensure-toolchain.sh"
    return build_image(tmp_path_factory.mktemp("fw-build"), DeviceIdentity(), sample_ms=250)


@pytest.fixture
def broker(tmp_path: Path, firmware_image: FirmwareImage) -> Iterator[PasswordBroker]:
    """A broker that knows the device (publish only under its own topic) and a reader."""
    ident = firmware_image.identity
    server = PasswordBroker(tmp_path / "broker")
    server.add_user(
        ident.username,
        ident.password,
        [f"topic write v1/{ident.tenant}/{ident.site}/{ident.device_id}/#"],
    )
    server.add_user(SUBSCRIBER[0], SUBSCRIBER[1], ["topic read v1/#"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def subscriber(broker: PasswordBroker) -> Iterator[Subscriber]:
    """Subscribed to v1/# at QoS 1 on a persistent session before the device starts."""
    sub = Subscriber(broker.port, *SUBSCRIBER).start()
    yield sub
    sub.stop()
