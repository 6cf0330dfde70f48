"""One simulated STM32 device: sample, buffer, publish stop-and-wait over MQTT/TLS, reboot.

The loop mirrors the firmware's device.c on one thread: it samples at a fixed
rate into the ring, keeps one reading in flight (QoS 1, oldest first) and
removes it from the ring only on its PUBACK. A lost link (broker gone, Wi-Fi
dropped, no PUBACK within ``puback_timeout_s``) is followed by a reconnect
with exponential backoff and full jitter; the reading in flight goes out again
on the next connection with the same seq (the gateway deduplicates on
``(tenant, device_id, seq)``). A brown-out resets the device: the ring (RAM)
is lost, the seq resumes from its persisted ceiling.

A Wi-Fi drop is simulated as the ESP-AT module reports one: the TCP link is
closed at once (no MQTT DISCONNECT), and no connection can be made until the
window ends. paho-mqtt's own network loop is driven from this thread
(``Client.loop``), which also sends the keep-alive PINGREQs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .models import (
    CURRENT_BOOT_MA,
    CURRENT_IDLE_MA,
    CURRENT_SLEEP_MA,
    CURRENT_TX_MA,
    Backoff,
    Battery,
    Sensors,
    Wifi,
)
from .profile import DeviceSpec
from .storage import Reading, Ring, SeqStore

FW_VERSION = "sim-0.1.0"
BOARD = "sim-stm32"
TICK_S = 0.02


@dataclass(frozen=True)
class BrokerTarget:
    """Where the devices connect: the edge broker's TLS listener."""

    host: str
    port: int
    ca_file: str


@dataclass(frozen=True)
class Credentials:
    """A device's identity as the registry issued it."""

    device_id: str
    tenant: str
    site: str
    username: str
    password: str


class DeviceLog:
    """The device's own JSONL log: one object per event, flushed line by line."""

    def __init__(self, path: Path, device_id: str, t0: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.device_id = device_id
        self.t0 = t0
        self._file = path.open("a", buffering=1)

    def write(self, event: str, **fields: Any) -> None:
        """Append one event with wall-clock time and seconds since the fleet started."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        row = {"t": now, "s": round(time.monotonic() - self.t0, 3), "ev": event, **fields}
        self._file.write(json.dumps(row, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()


class LinkLost(Exception):
    """The MQTT connection is gone (the reason is the message)."""


class Reboot(Exception):
    """The device resets (brown-out); the ring is lost."""


class Depleted(Exception):
    """The battery is empty: the device stays off."""


class SimDevice:
    """A simulated device, run on its own thread by ``run()``."""

    def __init__(
        self,
        spec: DeviceSpec,
        creds: Credentials,
        target: BrokerTarget,
        state_dir: Path,
        *,
        seed: int,
        t0: float,
        stop: threading.Event,
        drain: threading.Event,
    ) -> None:
        self.spec = spec
        self.creds = creds
        self.target = target
        self.dir = state_dir / spec.id
        self.t0 = t0
        self.stop = stop  # stop now
        self.drain = drain  # stop sampling, send what is buffered, then stop
        self.rng = random.Random(f"{seed}:{spec.id}")
        self.battery = Battery(spec.battery, self.rng)
        self.wifi = Wifi(spec.wifi, self.rng)
        self.sensors = Sensors(spec.sensors, self.rng)
        self.backoff = Backoff(self.rng, spec.backoff_base_s, spec.backoff_cap_s)
        self.log = DeviceLog(self.dir / "log.jsonl", spec.id, t0)
        self.topic_prefix = f"v1/{creds.tenant}/{creds.site}/{creds.device_id}"
        self.boots = 0
        self.connections = 0  # since power-on, across reboots
        self.reconnects = 0
        self.lost_on_reboot = 0
        self.outcome = "running"
        self._events = sorted(spec.events, key=lambda e: e.at_s)
        self._forced_brownout = False
        self._low_power = False
        # Per boot:
        self.ring = Ring(spec.ring_slots)
        self.seqs: SeqStore | None = None
        self._client: paho.Client | None = None
        self._inflight: tuple[Reading, int, float] | None = None  # reading, mid, sent at
        self._attempts: dict[int, int] = {}
        self._acks: dict[int, Any] = {}
        self._gone: str | None = None
        self._connack: Any = None
        self._samples = 0
        self._booted_at = 0.0

    # -- clock and power -------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the fleet started (the schedule of events uses this clock)."""
        return time.monotonic() - self.t0

    def _current(self) -> float:
        if self._inflight is not None:
            return CURRENT_TX_MA
        if self._client is not None or not self._low_power:
            return CURRENT_IDLE_MA
        return CURRENT_SLEEP_MA

    def _check_power(self, load_ma: float) -> None:
        if self._forced_brownout or self.battery.browns_out(load_ma):
            volts = self.battery.voltage(load_ma)
            self.log.write(
                "brownout",
                forced=self._forced_brownout,
                battery_v=round(volts, 3),
                load_ma=load_ma,
            )
            self._forced_brownout = False
            raise Reboot("brownout")
        if self.battery.depleted():
            raise Depleted()

    # -- the thread --------------------------------------------------------------------------

    def run(self) -> None:
        """Boot, run until stopped; a brown-out reboots after ``boot_s``."""
        reason = "power_on"
        try:
            while not self.stop.is_set():
                try:
                    self._run_boot(reason)
                    break  # drained or stopped
                except Reboot as exc:
                    reason = str(exc)
                    self._teardown(graceful=False)
                    lost = self.ring.clear()
                    self.lost_on_reboot += len(lost)
                    if lost:
                        self.log.write("lost_on_reboot", seqs=[r.seq for r in lost])
                    self._sleep(self.spec.boot_s)
                except Depleted:
                    self._teardown(graceful=False)
                    self.log.write("power_off", soc=round(self.battery.soc, 4))
                    self.outcome = "depleted"
                    return
        finally:
            self._teardown(graceful=True)
            self.log.write(
                "stop",
                outcome=self.outcome,
                buffered=[r.seq for r in self.ring.clear()],
                ring_dropped=self.ring.dropped,
                boots=self.boots,
                reconnects=self.reconnects,
            )
            self.log.close()

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)

    def _run_boot(self, reason: str) -> None:
        self.boots += 1
        self._booted_at = self.now()
        self.seqs = SeqStore(self.dir / "seq.json", self.spec.seq_lease)  # read back from "flash"
        self.ring = Ring(self.spec.ring_slots)
        self._inflight = None
        self.backoff.reset()
        self.battery.step(self.spec.boot_s, CURRENT_BOOT_MA)
        self.log.write(
            "boot",
            boot=self.boots,
            reason=reason,
            seq_resume=self.seqs.next_seq,
            battery_v=round(self.battery.voltage(CURRENT_BOOT_MA), 3),
        )
        next_sample = self.now()
        next_attempt = self.now()
        last = self.now()
        while True:
            now = self.now()
            step, last = now - last, now
            if self.stop.is_set():
                self.outcome = "stopped"
                return
            self.battery.step(step, self._current())
            self.wifi.step(now, step)
            self._due_events(now)
            self._check_power(self._current())
            self._update_mode()
            if not self.drain.is_set() and now >= next_sample:
                self._sample(now)
                period = self.spec.period_s * (self.spec.low_power_factor if self._low_power else 1)
                next_sample += period
                if next_sample < now:  # after a long stall resume from now, no burst
                    next_sample = now + period
            if self.drain.is_set() and not self.ring and self._inflight is None:
                self.outcome = "drained"
                return
            try:
                if self._client is None:
                    if self._wants_link() and self.wifi.up(now) and now >= next_attempt:
                        try:
                            self._connect()
                        except LinkLost as exc:
                            delay = self.backoff.next_delay()
                            next_attempt = self.now() + delay
                            self.log.write(
                                "connect_failed",
                                attempt=self.backoff.attempt,
                                error=str(exc),
                                retry_in_s=round(delay, 3),
                            )
                    else:
                        time.sleep(TICK_S)
                else:
                    self._service_link(now)
            except LinkLost as exc:
                self.log.write(
                    "link_lost",
                    reason=str(exc),
                    inflight=self._inflight[0].seq if self._inflight else None,
                )
                self._teardown(graceful=False)
                next_attempt = self.now() + self.backoff.next_delay()

    # -- readings ----------------------------------------------------------------------------

    def _due_events(self, now: float) -> None:
        while self._events and self._events[0].at_s <= now:
            event = self._events.pop(0)
            self.log.write("fault", kind=event.kind, duration_s=event.duration_s)
            if event.kind == "wifi_drop":
                self.wifi.force_drop(now, event.duration_s)
            elif event.kind == "brownout":
                self._forced_brownout = True

    def _update_mode(self) -> None:
        if self.spec.battery.kind == "bank":
            return
        volts = self.battery.voltage(CURRENT_IDLE_MA)
        if not self._low_power and volts < self.spec.battery.low_v:
            self._low_power = True
            self.log.write("power_mode", mode="saver", battery_v=round(volts, 3))
        elif self._low_power and volts > self.spec.battery.recover_v:
            self._low_power = False
            self.log.write("power_mode", mode="normal", battery_v=round(volts, 3))

    def _wants_link(self) -> bool:
        """Healthy: always connected. Saver: only when a batch waits. Draining: until empty."""
        if self.drain.is_set():
            return bool(self.ring)
        if self._low_power:
            return len(self.ring) >= self.spec.low_power_batch
        return True

    def _body(self, seq: int, metrics: dict[str, float]) -> bytes:
        ts = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = {
            "seq": seq,
            "ts": ts,
            "metrics": metrics,
            "tags": {"fw": FW_VERSION, "board": BOARD},
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def _queue(self, cls: str, metrics: dict[str, float], now: float) -> None:
        assert self.seqs is not None
        seq = self.seqs.take()
        body = self._body(seq, metrics)
        evicted = self.ring.push(Reading(seq, cls, body, now))
        self.log.write("queued", seq=seq, cls=cls, body=json.loads(body))
        if evicted is not None:
            self.log.write("drop_oldest", seq=evicted.seq, dropped=self.ring.dropped)

    def _sample(self, now: float) -> None:
        metrics: dict[str, float] = dict(self.sensors.read(now))
        metrics["battery_v"] = round(self.battery.voltage(self._current()), 3)
        metrics["rssi_dbm"] = round(self.wifi.rssi, 1)
        self._queue("telemetry", metrics, now)
        self._samples += 1
        if self.spec.health_every and self._samples % self.spec.health_every == 0:
            health = {
                "battery_v": metrics["battery_v"],
                "soc_pct": round(self.battery.soc * 100, 1),
                "rssi_dbm": metrics["rssi_dbm"],
                "uptime_s": round(now - self._booted_at, 1),
                "boots": self.boots,
                "reconnects": self.reconnects,
                "ring_used": len(self.ring),
                "ring_dropped": self.ring.dropped,
            }
            self._queue("health", health, now)

    # -- MQTT --------------------------------------------------------------------------------

    def _new_client(self) -> paho.Client:
        v5 = self.spec.mqtt_version == 5
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.creds.device_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else True,
        )
        ctx = ssl.create_default_context(cafile=self.target.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        client.tls_set_context(ctx)
        client.username_pw_set(self.creds.username, self.creds.password)
        client.connect_timeout = self.spec.connect_timeout_s
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        return client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._connack = rc

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._acks[mid] = rc

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._gone = f"disconnected ({rc})"

    def _connect(self) -> None:
        self._check_power(CURRENT_TX_MA)  # the handshake is a transmit burst
        client = self._new_client()
        self._connack = None
        self._gone = None
        self._acks = {}
        started = self.now()
        try:
            client.connect(self.target.host, self.target.port, keepalive=self.spec.keepalive_s)
        except (OSError, ssl.SSLError) as exc:
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
            raise LinkLost(f"{type(exc).__name__}: {exc}") from None
        self._client = client
        deadline = started + self.spec.connect_timeout_s
        while self._connack is None and self._gone is None and self.now() < deadline:
            client.loop(timeout=TICK_S)
        rc = self._connack
        if rc is None or rc.is_failure:
            why = f"CONNACK {rc}" if rc is not None else (self._gone or "no CONNACK")
            self._teardown(graceful=False)
            raise LinkLost(why)
        self.connections += 1
        if self.connections > 1:
            self.reconnects += 1
        self.backoff.reset()
        self.log.write(
            "connected",
            rtt_ms=round((self.now() - started) * 1000, 1),
            rssi_dbm=round(self.wifi.rssi, 1),
        )

    def _service_link(self, now: float) -> None:
        client = self._client
        assert client is not None
        if not self.wifi.up(now):
            self.log.write("wifi_down", rssi_dbm=round(self.wifi.rssi, 1))
            self._teardown(graceful=False)
            return
        rc = client.loop(timeout=TICK_S)
        if self._inflight is not None:
            reading, mid, sent_at = self._inflight
            if mid in self._acks:
                ack = self._acks.pop(mid)
                self._inflight = None
                if getattr(ack, "is_failure", False):
                    # MQTT v5: the broker refused it (ACL); retrying cannot cure that.
                    self.log.write("puback_refused", seq=reading.seq, rc=str(ack))
                else:
                    self.log.write(
                        "puback", seq=reading.seq, rtt_ms=round((self.now() - sent_at) * 1000, 1)
                    )
                self.ring.pop_head(reading.seq)
            elif self.now() - sent_at > self.spec.puback_timeout_s:
                raise LinkLost(f"no PUBACK for seq {reading.seq} in {self.spec.puback_timeout_s}s")
        if self._gone is not None or rc not in (paho.MQTT_ERR_SUCCESS, None):
            raise LinkLost(self._gone or f"network loop: {paho.error_string(rc)}")
        if self._inflight is None and self.ring:
            self._publish()
        elif self._inflight is None and self._low_power and not self.drain.is_set():
            self.log.write("radio_off")
            self._teardown(graceful=True)

    def _publish(self) -> None:
        client = self._client
        reading = self.ring.head()
        assert client is not None and reading is not None
        self._check_power(CURRENT_TX_MA)
        attempt = self._attempts.get(reading.seq, 0) + 1
        self._attempts = {reading.seq: attempt}  # only the head is ever retried
        topic = f"{self.topic_prefix}/{reading.cls}"
        info = client.publish(topic, reading.body, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise LinkLost(f"publish: {paho.error_string(info.rc)}")
        self._inflight = (reading, info.mid, self.now())
        self.log.write("publish", seq=reading.seq, cls=reading.cls, attempt=attempt, mid=info.mid)

    def _teardown(self, *, graceful: bool) -> None:
        """Close the connection: DISCONNECT when graceful, else drop the TCP link at once."""
        client, self._client = self._client, None
        self._inflight = None
        if client is None:
            return
        if graceful:
            with contextlib.suppress(Exception):
                client.disconnect()
                for _ in range(10):
                    if client.socket() is None:
                        break
                    client.loop(timeout=TICK_S)
        sock = client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
