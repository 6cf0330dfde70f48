"""MQTT sinks: AWS IoT Core over mutual TLS (``aws-iot-mqtt``) and any broker (``mqtt``).

Each connection of the pool has its own client id, token bucket (publishes
per second) and in-flight window (unacknowledged QoS 1 publishes), and its
own reconnect loop with backoff and full jitter. A device always goes through
the same connection, so its records reach the broker in spool order.

aiomqtt 2.5 does not surface the PUBACK reason code, which MQTT v5 uses to say
"not authorized" or "quota exceeded": :class:`_AckingClient` keeps a future
per packet id that the PUBACK completes with its reason code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from iotgw_core import metrics
from iotgw_core.sink import DELIVERED, SKIPPED, Delivery, Outcome, SinkUnavailable
from iotgw_core.spool import StoredRecord
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .common import (
    PermanentError,
    RateMeter,
    TokenBucket,
    TopicTemplate,
    batch_payload,
    check_size,
)

log = logging.getLogger(__name__)
_PAHO_LOG = logging.getLogger(f"{__name__}.paho")
_PAHO_LOG.setLevel(logging.CRITICAL)

# PUBACK reason codes (MQTT v5) that retrying cannot cure.
_PERMANENT = {
    0x87: "not_authorized",
    0x90: "invalid_topic",
    0x95: "payload_too_large",
    0x99: "payload_format_invalid",
}
_THROTTLED = {0x97}  # quota exceeded: AWS IoT's throttling


class ConnectionLost(Exception):
    """The connection went away before the broker acknowledged a publish."""


class _AckingClient(aiomqtt.Client):
    """aiomqtt's client, plus publishes that resolve to their PUBACK reason code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: dict[int, asyncio.Future[int]] = {}
        self._early: dict[int, int] = {}
        self.socket_error: str | None = None
        self._client.on_log = self._on_log

    def _on_log(self, client: Any, userdata: Any, level: int, message: str) -> None:
        # paho only logs why a socket failed (a TLS alert during the handshake);
        # keep it, so that the failed connect can say why instead of timing out.
        if level == paho.MQTT_LOG_ERR:
            self.socket_error = message

    def begin_publish(
        self, topic: str, payload: bytes, properties: Properties | None
    ) -> asyncio.Future[int]:
        """Send a QoS 1 PUBLISH now (in call order); the future resolves on its PUBACK."""
        info = self._client.publish(topic, payload, 1, False, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionLost(f"publish not sent: {paho.error_string(info.rc)}")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        early = self._early.pop(info.mid, None)
        if early is not None:
            future.set_result(early)
        else:
            self._acks[info.mid] = future
        return future

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        code = int(getattr(reason_code, "value", reason_code) or 0)
        future = self._acks.pop(mid, None)
        if future is None:
            self._early[mid] = code
        elif not future.done():
            future.set_result(code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_disconnect(self, *args: Any, **kwargs: Any) -> None:
        if not self._connected.done():
            reason = self.socket_error or "the broker closed the connection before CONNACK"
            self._connected.set_exception(ConnectionLost(reason))
        acks, self._acks = self._acks, {}
        for future in acks.values():
            if not future.done():
                future.set_exception(ConnectionLost("connection lost before PUBACK"))
        super()._on_disconnect(*args, **kwargs)

    @property
    def disconnected(self) -> asyncio.Future[None]:
        """Resolves (or fails) when the connection ends."""
        return self._disconnected

    @property
    def unacked(self) -> int:
        """Publishes sent and not yet acknowledged."""
        return len(self._acks)


@dataclass(slots=True)
class MqttSinkConfig:
    """Everything an MQTT sink needs (built from ForwarderSettings in __main__)."""

    name: str
    host: str
    port: int
    client_id: str
    topic: TopicTemplate = field(default_factory=TopicTemplate)
    tls: bool = True
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = ""
    protocol: str = "5"
    connections: int = 1
    rate_per_connection: float = 80.0
    burst: int = 10
    max_inflight: int = 100
    keepalive_s: int = 30
    ack_timeout_s: float = 10.0
    reconnect_base_s: float = 0.5
    reconnect_cap_s: float = 30.0
    max_publish_bytes: int = 128 * 1024
    batch_max_records: int = 1
    tag_connection: bool = True


def tls_context(config: MqttSinkConfig) -> ssl.SSLContext:
    """TLS 1.2+ with the thing's certificate and key; raises ValueError naming a bad file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if config.ca_file:
            ctx.load_verify_locations(cafile=config.ca_file)
        else:
            ctx.load_default_certs()
        if config.cert_file or config.key_file:
            ctx.load_cert_chain(config.cert_file, config.key_file or None)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("ca", config.ca_file),
                ("cert", config.cert_file),
                ("key", config.key_file),
            )
            if v
        )
        raise ValueError(f"cannot load the sink's TLS files ({files}): {exc}") from None
    return ctx


def explain(exc: BaseException, config: MqttSinkConfig) -> str:
    """An operator's reading of a connection failure."""
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    where = f"{config.host}:{config.port}"
    if "certificate" in lowered or "unknown ca" in lowered or "ssl" in lowered or "tls" in lowered:
        return (
            f"TLS handshake with {where} failed ({text}): check the thing's certificate, key and"
            " CA (IOTGW_MQTT_SINK_CERT_FILE, _KEY_FILE, _CA_FILE)"
        )
    if "not authori" in lowered or "bad user name" in lowered or "banned" in lowered:
        return f"{where} refused the connection ({text}): the credential is not authorized"
    if "refused" in lowered or "timed out" in lowered or "unreachable" in lowered:
        return f"cannot reach {where} ({text})"
    return f"connection to {where} failed: {text}"


@dataclass(slots=True)
class _Unit:
    """One publish: one record, or several consecutive records of one device and class."""

    topic: str
    payload: bytes
    indexes: list[int]


class _Connection:
    """One broker connection: reconnect loop, token bucket, in-flight window."""

    def __init__(self, sink: MqttSink, index: int) -> None:
        self.sink = sink
        self.config = sink.config
        self.client_id = (
            self.config.client_id
            if self.config.connections == 1
            else f"{self.config.client_id}-{index}"
        )
        self.bucket = TokenBucket(self.config.rate_per_connection, self.config.burst)
        self.window = asyncio.Semaphore(self.config.max_inflight)
        self.meter = RateMeter()
        self.client: _AckingClient | None = None
        self.up = asyncio.Event()
        self.last_error: str | None = None
        self.connects = 0
        self.failures = 0
        self.inflight = 0
        self.peak_inflight = 0
        self.published = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._outstanding: set[asyncio.Future[int]] = set()
        self._labels = (self.config.name, self.client_id)
        self._props: Properties | None = None
        if self.config.protocol == "5" and self.config.tag_connection:
            self._props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            self._props.UserProperty = [("iotgw-connection", self.client_id)]

    def start(self) -> None:
        """Start the reconnect loop."""
        self._task = asyncio.create_task(self._run(), name=f"mqtt-sink-{self.client_id}")

    async def _run(self) -> None:
        config = self.config
        while not self._closing:
            try:
                client = _AckingClient(
                    config.host,
                    config.port,
                    identifier=self.client_id,
                    username=config.username or None,
                    password=config.password or None,
                    protocol=(
                        aiomqtt.ProtocolVersion.V5
                        if config.protocol == "5"
                        else aiomqtt.ProtocolVersion.V311
                    ),
                    keepalive=config.keepalive_s,
                    timeout=config.ack_timeout_s,
                    tls_context=self.sink.tls if config.tls else None,
                    max_inflight_messages=config.max_inflight,
                    max_queued_outgoing_messages=0,
                    # A window of QoS 1 publishes stalls on Nagle without this.
                    socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                    clean_session=True if config.protocol != "5" else None,
                    # paho logs every failed socket at ERROR; _Connection says it once.
                    logger=_PAHO_LOG,
                )
                async with client:
                    self.client = client
                    self.connects += 1
                    self.failures = 0
                    if self.last_error is not None:
                        log.info("sink connection %s is back", self.client_id)
                    self.last_error = None
                    self.up.set()
                    metrics.SINK_CONNECTED.labels(*self._labels).set(1)
                    with contextlib.suppress(aiomqtt.MqttError):
                        await asyncio.shield(client.disconnected)
                    if not self._closing:
                        raise ConnectionLost("the broker closed the connection")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                message = explain(exc, config)
                if message != self.last_error:
                    log.warning("sink connection %s: %s", self.client_id, message)
                self.last_error = message
            finally:
                self.up.clear()
                self.client = None
                metrics.SINK_CONNECTED.labels(*self._labels).set(0)
            if self._closing:
                break
            self.failures += 1
            ceiling = min(
                config.reconnect_cap_s, config.reconnect_base_s * 2 ** min(self.failures - 1, 16)
            )
            await asyncio.sleep(random.uniform(ceiling / 4, ceiling))

    async def publish_all(self, units: Sequence[_Unit]) -> list[Delivery | BaseException]:
        """Publish ``units`` in order, up to the window at once; one answer per unit."""
        futures: list[asyncio.Future[int] | BaseException] = []
        for unit in units:
            client = self.client
            if client is None or not self.up.is_set():
                futures.append(ConnectionLost(self.last_error or "not connected"))
                continue
            await self.bucket.take()
            await self.window.acquire()
            try:
                future = client.begin_publish(unit.topic, unit.payload, self._props)
            except Exception as exc:
                self.window.release()
                futures.append(exc)
                continue
            self.inflight += 1
            self.peak_inflight = max(self.peak_inflight, self.inflight)
            self._outstanding.add(future)
            future.add_done_callback(self._settled)
            futures.append(future)
        answers: list[Delivery | BaseException] = []
        for item in futures:
            if isinstance(item, BaseException):
                answers.append(item)
                continue
            try:
                code = await asyncio.wait_for(asyncio.shield(item), self.config.ack_timeout_s)
            except TimeoutError:
                answers.append(ConnectionLost("no PUBACK within the ack timeout"))
                continue
            except Exception as exc:
                answers.append(exc)
                continue
            answers.append(_classify(code))
        return answers

    def _settled(self, future: asyncio.Future[int]) -> None:
        self._outstanding.discard(future)
        self.inflight -= 1
        self.window.release()
        if not future.cancelled() and future.exception() is None and future.result() < 0x80:
            self.published += 1
            self.meter.add()
            metrics.SINK_PUBLISHES.labels(*self._labels).inc()

    async def close(self) -> None:
        """Wait briefly for unacknowledged publishes, then disconnect."""
        self._closing = True
        if self._outstanding:
            await asyncio.wait(set(self._outstanding), timeout=self.config.ack_timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def status(self) -> dict[str, Any]:
        """Connection state and pacing figures."""
        rate = self.meter.per_second()
        metrics.SINK_PUBLISH_RATE.labels(*self._labels).set(rate)
        return {
            "client_id": self.client_id,
            "connected": self.up.is_set(),
            "connects": self.connects,
            "published": self.published,
            "publishes_per_s": round(rate, 1),
            "peak_publishes_per_s": self.meter.peak_per_s,
            "inflight": self.inflight,
            "peak_inflight": self.peak_inflight,
            "last_error": self.last_error,
        }


def _classify(code: int) -> Delivery:
    if code < 0x80:
        return DELIVERED
    if code in _PERMANENT:
        return Delivery(
            Outcome.REJECT, f"{_PERMANENT[code]}: the broker answered PUBACK 0x{code:02x}"
        )
    if code in _THROTTLED:
        return Delivery(Outcome.RETRY, f"throttled: the broker answered PUBACK 0x{code:02x}")
    return Delivery(Outcome.RETRY, f"publish_failed: the broker answered PUBACK 0x{code:02x}")


class MqttSink:
    """QoS 1 publishes to an MQTT broker (AWS IoT Core or any other), paced per connection."""

    def __init__(self, config: MqttSinkConfig) -> None:
        self.config = config
        self.name = config.name
        config.topic.validate()
        if config.tls:
            for label, path in (
                ("CA", config.ca_file),
                ("certificate", config.cert_file),
                ("key", config.key_file),
            ):
                if path and not Path(path).is_file():
                    raise ValueError(f"the sink's {label} file {path} does not exist")
        self.tls = tls_context(config) if config.tls else None
        self.connections: list[_Connection] = []

    async def start(self) -> None:
        """Open the pool; returns at once (connections come up in the background)."""
        self.connections = [_Connection(self, i) for i in range(max(1, self.config.connections))]
        for conn in self.connections:
            conn.start()
        # Give the first connection a moment so that the first batch does not
        # find the sink "unavailable" only because it is still connecting.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connections[0].up.wait(), 5.0)

    def _plan(self, records: Sequence[StoredRecord]) -> tuple[list[Delivery | None], list[_Unit]]:
        """Topics, size checks and batching; permanent failures answered at once."""
        answers: list[Delivery | None] = [None] * len(records)
        units: list[_Unit] = []
        limit = self.config.max_publish_bytes
        open_unit: _Unit | None = None
        open_size = 0
        for index, rec in enumerate(records):
            try:
                topic = self.config.topic.render(rec)
                check_size(len(rec.body), topic, limit)
            except PermanentError as exc:
                answers[index] = Delivery(Outcome.REJECT, exc.reason)
                open_unit = None
                continue
            if (
                open_unit is not None
                and open_unit.topic == topic
                and len(open_unit.indexes) < self.config.batch_max_records
                and open_size + len(rec.body) + 1 + len(topic) + 64 <= limit
            ):
                open_unit.indexes.append(index)
                open_size += len(rec.body) + 1
                continue
            open_unit = _Unit(topic, b"", [index])
            open_size = len(rec.body) + 2
            units.append(open_unit)
        for unit in units:
            unit.payload = batch_payload([records[i].body for i in unit.indexes])
        return answers, units

    def _connection_of(self, record: StoredRecord) -> int:
        key = f"{record.tenant}/{record.device_id}".encode()
        return zlib.crc32(key) % len(self.connections)

    async def deliver(self, records: Sequence[StoredRecord]) -> list[Delivery]:
        """Publish every record (QoS 1) and wait for its PUBACK; one answer per record."""
        if not any(conn.up.is_set() for conn in self.connections):
            raise SinkUnavailable(self._why_down())
        answers, units = self._plan(records)
        by_conn: dict[int, list[_Unit]] = {}
        for unit in units:
            by_conn.setdefault(self._connection_of(records[unit.indexes[0]]), []).append(unit)
        groups = list(by_conn.items())
        results = await asyncio.gather(
            *(self.connections[i].publish_all(group) for i, group in groups)
        )
        lost: list[str] = []
        for (_, group), group_results in zip(groups, results, strict=True):
            for unit, result in zip(group, group_results, strict=True):
                if isinstance(result, BaseException):
                    lost.append(str(result))
                    answer = Delivery(Outcome.SKIPPED, f"connection_lost: {result}")
                else:
                    answer = result
                for index in unit.indexes:
                    answers[index] = answer
        final = [a if a is not None else SKIPPED for a in answers]
        if lost and all(a.outcome is Outcome.SKIPPED for a in final):
            # Nothing went through: the uplink is down, not these records' fault.
            raise SinkUnavailable(f"{self._why_down()}; {lost[0]}")
        return final

    def _why_down(self) -> str:
        errors = [c.last_error for c in self.connections if c.last_error]
        where = f"{self.config.host}:{self.config.port}"
        return errors[0] if errors else f"no connection to {where} is up"

    async def close(self) -> None:
        """Wait for outstanding PUBACKs (bounded), then disconnect every connection."""
        await asyncio.gather(*(conn.close() for conn in self.connections))

    def status(self) -> dict[str, Any]:
        """Per-connection state for /healthz and the tests."""
        conns = [conn.status() for conn in self.connections]
        up = sum(1 for c in conns if c["connected"])
        return {
            "sink": self.name,
            "status": "ok" if up == len(conns) and conns else ("degraded" if up else "failing"),
            "endpoint": f"{self.config.host}:{self.config.port}",
            "connections": conns,
        }
