"""`iotgw devices ...` end to end: the registry, the broker's files, and the running broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from iotgw_core.auth import verify_mqtt_password
from iotgw_core.registry import load_registry

from tests.support.mosquitto import DevicePublisher, MosquittoBroker

pytestmark = [pytest.mark.integration]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    running = MosquittoBroker(tmp_path / "broker").start()
    yield running
    running.stop()


def iotgw(broker: MosquittoBroker, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **broker.env()}
    return subprocess.run(
        [sys.executable, "-m", "iotgw_cli", *args], env=env, capture_output=True, text=True
    )


def connects(broker: MosquittoBroker, creds: dict[str, Any]) -> bool:
    pub = DevicePublisher(broker, creds, client_id=f"probe-{os.urandom(3).hex()}").start(5)
    try:
        return pub.connected.is_set()
    finally:
        pub.stop()


def test_add_list_rotate_remove(broker: MosquittoBroker) -> None:
    added = iotgw(broker, "devices", "add", "stm32-07", "--tenant", "acme", "--site", "aal")
    assert added.returncode == 0, added.stderr
    creds = json.loads(added.stdout)
    assert "shown once" in added.stderr
    assert creds["broker_reloaded"] is True
    # Stored hashed: the registry never holds the password itself.
    text = broker.paths.registry.read_text()
    assert creds["password"] not in text
    device = load_registry(broker.paths.registry).devices["stm32-07"]
    assert verify_mqtt_password(creds["password"], device.mqtt_password_hash)
    assert f"stm32-07:{device.mqtt_password_hash}" in broker.paths.password_file.read_text()
    assert "topic write v1/acme/aal/stm32-07/telemetry" in broker.paths.acl_file.read_text()
    assert connects(broker, creds)

    listed = iotgw(broker, "devices", "list", "--json")
    rows = json.loads(listed.stdout)
    assert [(r["device_id"], r["tenant"], r["site"]) for r in rows] == [("stm32-07", "acme", "aal")]
    assert creds["password"] not in listed.stdout and creds["http_secret"] not in listed.stdout

    dup = iotgw(broker, "devices", "add", "stm32-07", "--tenant", "acme", "--site", "aal")
    assert dup.returncode == 1 and "exists" in dup.stderr

    rotated = json.loads(iotgw(broker, "devices", "rotate", "stm32-07").stdout)
    assert rotated["password"] != creds["password"]
    assert not connects(broker, creds)  # the old password no longer works (SIGHUP reload)
    assert connects(broker, rotated)

    removed = iotgw(broker, "devices", "remove", "stm32-07")
    assert removed.returncode == 0
    assert load_registry(broker.paths.registry).devices == {}
    assert "stm32-07" not in broker.paths.password_file.read_text()
    assert not connects(broker, rotated)


def test_add_with_certificate_and_refused_names(broker: MosquittoBroker) -> None:
    added = iotgw(broker, "devices", "add", "cam-1", "--tenant", "acme", "--site", "aal", "--cert")
    creds = json.loads(added.stdout)
    assert Path(creds["cert_file"]).exists() and Path(creds["key_file"]).exists()
    pub = DevicePublisher(broker, creds, port=broker.cert_port, use_cert=True).start(5)
    try:
        assert pub.connected.is_set()
    finally:
        pub.stop()
    for bad in (["bad/id"], ["iotgw-ingest"], ["ok-id", "--tenant", "a+b"]):
        args = ["devices", "add", bad[0], "--tenant", "acme", "--site", "aal", *bad[1:]]
        result = iotgw(broker, *args)
        assert result.returncode == 1, result.stdout
    assert iotgw(broker, "devices", "remove", "nobody").returncode == 1
