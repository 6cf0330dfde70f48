"""Reusable pieces of the firmware tests: onboarding with the registry CLI, the
build with that identity, the firmware in QEMU with what it logged as
acknowledged, a persistent subscriber, and the body rules.

The broker is the project's edge Mosquitto fixture (tests/support/mosquitto.py:
the edge config, registry-generated password and ACL files). The firmware
speaks plain MQTT over its USART, so QEMU connects it to the broker's loopback
listener, which applies the same password file and ACL as every listener.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.mosquitto import MosquittoBroker
from tests.support.procs import REPO, Managed

FIRMWARE = REPO / "firmware" / "stm32"
KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
TOPIC_RE = re.compile(
    r"^v1/([A-Za-z0-9_-]{1,64})/([A-Za-z0-9_-]{1,64})/([A-Za-z0-9_-]{1,64})/"
    r"(telemetry|health|control-ack)$"
)
SIZE_RE = re.compile(r"image size: flash (\d+) / (\d+) bytes .*RAM (\d+) / (\d+) bytes")
COUNTS_RE = re.compile(r"^(\d+) passed, (\d+) failed$", re.MULTILINE)


def make(*args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run make in firmware/stm32; output captured, never raises on failure."""
    return subprocess.run(
        ["make", "-C", str(FIRMWARE), "--no-print-directory", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def body_rule_violations(body: Any) -> list[str]:
    """The gateway's body rules, restated independently of its code."""
    problems: list[str] = []
    if not isinstance(body, dict):
        return ["body is not an object"]
    unknown = set(body) - {"seq", "ts", "metrics", "tags", "payload"}
    if unknown:
        problems.append(f"unknown fields {sorted(unknown)}")
    seq = body.get("seq")
    if seq is not None and (type(seq) is not int or not 0 <= seq <= 2**63 - 1):
        problems.append(f"seq {seq!r}")
    metrics = body.get("metrics", {})
    if not isinstance(metrics, dict) or not metrics or len(metrics) > 32:
        problems.append("metrics must be an object with 1..32 keys")
    else:
        for key, value in metrics.items():
            if not KEY_RE.match(key):
                problems.append(f"metric key {key!r}")
            if type(value) not in (int, float) or not math.isfinite(value):
                problems.append(f"metric {key}={value!r}")
    tags = body.get("tags", {})
    if not isinstance(tags, dict) or len(tags) > 16:
        problems.append("tags must be an object with <= 16 keys")
    else:
        for key, value in tags.items():
            if not KEY_RE.match(key):
                problems.append(f"tag key {key!r}")
            if not isinstance(value, str) or len(value) > 64:
                problems.append(f"tag {key}={value!r}")
    return problems


@dataclass
class DeviceIdentity:
    """What `make image` bakes into the firmware; the password comes from `onboard`."""

    device_id: str = "stm32-qemu-01"
    tenant: str = "acme"
    site: str = "aal"
    password: str = ""

    @property
    def username(self) -> str:
        return self.device_id

    def topic(self, cls: str = "telemetry") -> str:
        return f"v1/{self.tenant}/{self.site}/{self.device_id}/{cls}"


@dataclass
class FirmwareImage:
    """A built image and the size figures the build printed."""

    elf: Path
    identity: DeviceIdentity
    flash_bytes: int
    flash_budget: int
    ram_bytes: int
    ram_budget: int
    build_output: str


def build_image(build_dir: Path, identity: DeviceIdentity, sample_ms: int) -> FirmwareImage:
    """`make image` for QEMU with this identity into build_dir; fails loudly if it cannot."""
    assert identity.password, "onboard the device first: the password comes from the registry"
    result = make(
        "image",
        "BOARD=qemu",
        f"BUILD={build_dir}",
        f"DEVICE_ID={identity.device_id}",
        f"TENANT={identity.tenant}",
        f"SITE={identity.site}",
        f"MQTT_USER={identity.username}",
        f"MQTT_PASS={identity.password}",
        f"SAMPLE_MS={sample_ms}",
        "KEEPALIVE_S=10",
        "SEQ_LEASE=1",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"make image failed:\n{output[-4000:]}"
    match = SIZE_RE.search(output)
    assert match, f"make image printed no size line:\n{output[-2000:]}"
    flash, flash_budget, ram, ram_budget = map(int, match.groups())
    return FirmwareImage(
        build_dir / "qemu" / "iotgw-fw.elf", identity, flash, flash_budget, ram, ram_budget, output
    )


def onboard(broker: MosquittoBroker, identity: DeviceIdentity) -> DeviceIdentity:
    """`iotgw devices add` as an operator runs it, against this broker's registry:
    the device gets a new password, the broker's password and ACL files are
    regenerated from the registry (and a running broker re-reads them). Returns
    the identity with the password the CLI printed, ready for `make image`."""
    result = subprocess.run(
        [
            sys.executable, "-m", "iotgw_cli", "devices", "add", identity.device_id,
            "--tenant", identity.tenant, "--site", identity.site,
        ],
        env={**os.environ, **broker.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"iotgw devices add failed:\n{result.stderr[-2000:]}"
    shown = json.loads(result.stdout)
    assert shown["username"] == identity.device_id
    assert identity.topic("telemetry") in shown["publish_topics"]
    return replace(identity, password=shown["password"])


@dataclass
class Received:
    topic: str
    payload: bytes
    dup: bool


@dataclass
class Subscriber:
    """A paho client on a persistent session (clean_session False, QoS 1) that
    keeps every message, across broker restarts."""

    port: int
    username: str
    password: str
    topic_filter: str = "v1/#"
    client_id: str = field(default_factory=lambda: f"fw-test-sub-{os.getpid()}")
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=paho.MQTTv311,
        )
        self.client.username_pw_set(self.username, self.password)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.dup)))

    def start(self, timeout_s: float = 10.0) -> Subscriber:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(timeout_s), "subscriber got no SUBACK"
        return self

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def seqs(self) -> list[int]:
        return [json.loads(m.payload)["seq"] for m in self.snapshot()]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


PUBACK_RE = re.compile(r"^PUBACK seq=(\d+) pid=(\d+)$", re.MULTILINE)
BOOT_RE = re.compile(r"^BOOT seq_next=(\d+) ", re.MULTILINE)
SAMPLE_RE = re.compile(r"^SAMPLE seq=(\d+) pending=(\d+)$", re.MULTILINE)


class QemuDevice:
    """The firmware in qemu-system-arm -M netduinoplus2. USART1 is a TCP client
    of the broker's plaintext loopback listener (QEMU reconnects it every
    second after the broker goes away); USART2, the firmware's log, goes to a
    file; the monitor listens on a unix socket for warm resets."""

    def __init__(self, image: FirmwareImage, broker_port: int, workdir: Path) -> None:
        self.log_path = workdir / "firmware.log"
        self.log_path.unlink(missing_ok=True)
        self.monitor_path = workdir / "qemu-monitor.sock"
        self.managed = Managed(
            f"qemu-{broker_port}",
            [
                "qemu-system-arm", "-M", "netduinoplus2", "-nographic",
                "-monitor", f"unix:{self.monitor_path},server=on,wait=off",
                "-kernel", str(image.elf),
                "-chardev", f"socket,id=mqtt,host=127.0.0.1,port={broker_port},reconnect=1",
                "-serial", "chardev:mqtt",
                "-chardev", f"file,id=log,path={self.log_path}",
                "-serial", "chardev:log",
            ],
            workdir,
        )  # fmt: skip

    def start(self) -> QemuDevice:
        self.managed.start()
        return self

    def stop(self) -> None:
        self.managed.stop(timeout_s=10)

    def warm_reset(self) -> None:
        """system_reset on the QEMU monitor: like the reset pin, RAM keeps its contents."""
        deadline = time.monotonic() + 10
        while not self.monitor_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as mon:
            mon.settimeout(5)
            mon.connect(str(self.monitor_path))
            # The banner and the first prompt may come in separate chunks: read
            # up to the prompt, or its late arrival would pass for the answer
            # below and the socket would close before QEMU ran the command
            # (QEMU drops a closed client's unread input).
            banner = b""
            while b"(qemu)" not in banner:
                chunk = mon.recv(4096)
                assert chunk, f"QEMU monitor closed: {banner!r}"
                banner += chunk
            mon.sendall(b"system_reset\n")
            # The monitor echoes the line and prompts again once it has run it.
            reply = b""
            while b"(qemu)" not in reply.partition(b"system_reset")[2]:
                chunk = mon.recv(4096)
                assert chunk, f"QEMU monitor closed: {reply!r}"
                reply += chunk

    def boots(self) -> list[int]:
        """seq_next of every BOOT line: where the seq store resumed."""
        return [int(m.group(1)) for m in BOOT_RE.finditer(self.log())]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def acked_seqs(self) -> list[int]:
        """Every seq the firmware logged after the broker's PUBACK, in order."""
        return [int(m.group(1)) for m in PUBACK_RE.finditer(self.log())]

    def sampled_seqs(self) -> list[int]:
        return [int(m.group(1)) for m in SAMPLE_RE.finditer(self.log())]

    def wait_until(self, what: str, cond: Callable[[], bool], timeout_s: float) -> None:
        """Poll cond (bounded in time) or fail with the firmware's log tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if cond():
                return
            if self.managed.proc is not None and self.managed.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"timed out waiting for {what}; firmware log tail:\n{self.log()[-1500:]}\n"
            f"qemu output:\n{self.managed.log_text()[-800:]}"
        )

    def ride_out_broker_restart(self, broker: MosquittoBroker) -> int:
        """Stop the broker while the device samples, start it again, wait until the
        device reconnected and had readings past the outage acknowledged.

        Returns the last seq sampled during the outage (they waited in the ring).
        """
        broker.stop()
        sampled_at_stop = max(self.sampled_seqs())
        self.wait_until(
            "samples during the outage",
            lambda: max(self.sampled_seqs()) >= sampled_at_stop + 6,
            timeout_s=15,
        )
        outage_last = max(self.sampled_seqs())
        broker.start()
        self.wait_until(
            "reconnect and PUBACKs past the outage",
            lambda: "CONNECTED count=2" in self.log() and max(self.acked_seqs()) >= outage_last + 2,
            timeout_s=45,
        )
        return outage_last
