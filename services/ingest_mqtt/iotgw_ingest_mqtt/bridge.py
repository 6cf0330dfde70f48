"""MQTT ingest: the edge broker's device topics into the durable spool.

One persistent MQTT v5 session (clean start off, session expiry) holds a QoS 1
subscription to ``v1/+/+/+/+``; the broker queues for the session while the
ingest is away. With ``IOTGW_MQTT_SHARE_GROUP`` set it is the shared
subscription ``$share/<group>/v1/+/+/+/+`` and replicas with their own client
ids split the messages. Mosquitto 2.0.11 restores a plain subscription from
its persistence after a restart but not a shared one: messages published
between the broker's restart and the ingest's re-subscription would be lost,
which is why one replica uses the plain subscription (docs/mqtt.md).

**PUBACK after commit.** aiomqtt 2.5 acknowledges nothing itself: paho-mqtt
sends the PUBACK as soon as its ``on_message`` returns unless the paho client
is in manual-ack mode. aiomqtt 2.5 does not expose that mode, so the bridge
turns it on on the wrapped paho client (``client._client.manual_ack_set``)
before connecting and calls ``client._client.ack(mid, qos)`` once the batch's
spool transaction has committed (or its quarantine entries are written). A
crash between receipt and commit leaves the message unacknowledged and the
broker delivers it again to the session.

**Backpressure.** While the spool is over its high-water mark (or the service
drains), the bridge stops taking messages from the client's queue; with no
PUBACKs the broker stops at the Receive Maximum in flight and queues the rest
for the session. Reading resumes below the low-water mark.

**Reconnect loop.** aiomqtt's documented loop: ``async with client`` inside
``while True``, ``except MqttError``: wait, with a doubling delay. A new Client
per connection: messages still queued from a dead connection carry packet ids
of that connection and must not be acknowledged on the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, cast

import aiomqtt
import paho.mqtt.client as paho
from iotgw_core import metrics
from iotgw_core.envelope import RECORD_CLASSES, RecordClass
from iotgw_core.ingest import IngestPipeline
from iotgw_core.quarantine import Quarantine, QuarantineEntry
from iotgw_core.registry import Registry, RegistryWatcher
from iotgw_core.spool import NewRecord, SpoolError
from iotgw_core.validation import (
    DEVICE_ID_RE,
    MAX_SEQ,
    Reading,
    ValidationFailure,
    decode_json,
    validate_reading,
)
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)
SOURCE: Final = "mqtt"
# Reasons that a registry change (a device added or moved) can cure.
REGISTRY_REASONS = frozenset({"unknown_device", "tenant_mismatch", "site_mismatch"})


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message that becomes a record."""

    record: NewRecord
    record_class: RecordClass


def user_properties(message: aiomqtt.Message) -> dict[str, str]:
    """MQTT v5 user properties of a message (the last value of a repeated name)."""
    props = message.properties
    pairs = getattr(props, "UserProperty", None) if props is not None else None
    return {str(k): str(v) for k, v in (pairs or [])}


def classify(
    message: aiomqtt.Message,
    registry: Registry,
    pipeline: IngestPipeline,
    *,
    max_payload: int,
    client_id: str,
) -> Accepted | QuarantineEntry:
    """Check topic, registry and payload; a record to commit or a quarantine entry."""
    topic = message.topic.value
    payload = message.payload if isinstance(message.payload, bytes) else b""
    if not isinstance(message.payload, bytes | bytearray):
        payload = str(message.payload).encode()

    def reject(reason: str, text: str) -> QuarantineEntry:
        return QuarantineEntry.of(topic, reason, text, payload, client_id=client_id)

    levels = topic.split("/")
    if len(levels) != 5 or levels[0] != "v1" or levels[4] not in RECORD_CLASSES:
        return reject(
            "invalid_topic",
            "topic must be v1/{tenant}/{site}/{device_id}/{telemetry|health|control-ack}",
        )
    _, tenant, site, device_id, record_class = levels
    if not DEVICE_ID_RE.match(device_id):
        return reject("invalid_topic", "device_id must match ^[A-Za-z0-9_-]{1,64}$")
    device = registry.get(device_id)
    if device is None:
        return reject("unknown_device", f"device {device_id!r} is not in the registry")
    if device.tenant != tenant:
        return reject(
            "tenant_mismatch", f"device {device_id!r} belongs to tenant {device.tenant!r}"
        )
    if device.site != site:
        return reject("site_mismatch", f"device {device_id!r} belongs to site {device.site!r}")
    if len(payload) > max_payload:
        return reject("payload_too_large", f"payload must be <= {max_payload} bytes")
    props = user_properties(message)
    try:
        reading = validate_reading(decode_json(payload))
    except ValidationFailure as exc:
        return reject(exc.code, exc.message)
    if reading.seq is None and "seq" in props:
        try:
            seq = int(props["seq"])
        except ValueError:
            seq = -1
        if not 0 <= seq <= MAX_SEQ:
            return reject("invalid_seq", "user property seq must be an integer in 0..2^63-1")
        reading = Reading(
            ts=reading.ts,
            seq=seq,
            metrics=reading.metrics,
            tags=reading.tags,
            payload=reading.payload,
        )
    rc = cast(RecordClass, record_class)
    record = pipeline.build(
        reading,
        device_id=device_id,
        tenant=device.tenant,
        site=device.site,
        record_class=rc,
        traceparent=props.get("traceparent"),
    )
    return Accepted(record=record, record_class=rc)


class Bridge:
    """Shared subscription -> validation -> spool commit -> PUBACK."""

    def __init__(
        self,
        *,
        pipeline: IngestPipeline,
        registry: RegistryWatcher,
        quarantine: Quarantine,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        client_id: str,
        share_group: str,
        topic: str,
        session_expiry_s: int = 7 * 86400,
        receive_maximum: int = 1000,
        max_payload: int = 64 * 1024,
        max_batch: int = 500,
        max_concurrent_batches: int = 4,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        keepalive_s: int = 30,
    ) -> None:
        self.pipeline = pipeline
        self.registry = registry
        self.quarantine = quarantine
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.client_id = client_id
        self.subscription = f"$share/{share_group}/{topic}" if share_group else topic
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.max_payload = max_payload
        self.max_batch = max_batch
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.keepalive_s = keepalive_s
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._batches: set[asyncio.Task[None]] = set()
        self._failed: BaseException | None = None
        self.connected = asyncio.Event()

    def _client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username or None,
            password=self.password or None,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,  # keep the session (subscription, queue) across restarts
            properties=props,
            keepalive=self.keepalive_s,
            timeout=10,
        )
        # aiomqtt 2.5 has no public switch for this: see the module docstring.
        client._client.manual_ack_set(True)
        return client

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, consume, reconnect with a doubling delay, until ``stop`` is set."""
        delay = self.reconnect_min_s
        while not stop.is_set():
            client = self._client()
            try:
                async with client:
                    metrics.MQTT_CONNECTS.inc()
                    metrics.MQTT_CONNECTED.set(1)
                    log.info(
                        "connected to %s:%d as %s; subscribing %s",
                        self.host,
                        self.port,
                        self.client_id,
                        self.subscription,
                    )
                    await client.subscribe(self.subscription, qos=1)
                    self.connected.set()
                    delay = self.reconnect_min_s
                    await self._consume(client, stop)
                    await self._settle()
            except aiomqtt.MqttError as exc:
                log.warning("MQTT connection lost: %s; reconnecting in %.1fs", exc, delay)
            except _BatchFailed as exc:
                log.error("committing a batch failed (%s); reconnecting in %.1fs", exc, delay)
            finally:
                self.connected.clear()
                metrics.MQTT_CONNECTED.set(0)
                await self._settle()
            if stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(self.reconnect_max_s, delay * 2)

    async def _settle(self) -> None:
        # Let in-flight batches finish (commit + PUBACK) before leaving a connection.
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        self._failed = None

    async def _admitted(self, stop: asyncio.Event) -> None:
        """Return once readings are accepted again (spool below low water, not draining)."""
        if not (self.pipeline.full or self.pipeline.draining):
            return
        metrics.MQTT_PAUSED.set(1)
        log.warning("spool full or draining: not taking MQTT messages until it is below low water")
        while (self.pipeline.full or self.pipeline.draining) and not stop.is_set():
            # The pipeline's budget loop re-reads the spool totals every second.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        metrics.MQTT_PAUSED.set(0)
        if not stop.is_set():
            log.info("taking MQTT messages again")

    async def _consume(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        queue = client._queue  # aiomqtt 2.5 has no batch read: drain what is there
        messages = client.messages
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if self._failed is not None:
                    raise _BatchFailed(str(self._failed))
                await self._admitted(stop)
                if stop.is_set():
                    return
                nxt = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait({nxt, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await nxt
                    return
                batch = [nxt.result()]
                while len(batch) < self.max_batch and not queue.empty():
                    batch.append(queue.get_nowait())
                await self._slots.acquire()
                task = asyncio.create_task(self._handle(client, batch))
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)
        finally:
            stopped.cancel()

    def _classify(
        self, batch: Sequence[aiomqtt.Message], registry: Registry
    ) -> tuple[list[Accepted], list[QuarantineEntry]]:
        accepted: list[Accepted] = []
        rejected: list[QuarantineEntry] = []
        for message in batch:
            outcome = classify(
                message,
                registry,
                self.pipeline,
                max_payload=self.max_payload,
                client_id=self.client_id,
            )
            if isinstance(outcome, Accepted):
                accepted.append(outcome)
            else:
                rejected.append(outcome)
        return accepted, rejected

    async def _handle(self, client: aiomqtt.Client, batch: Sequence[aiomqtt.Message]) -> None:
        try:
            metrics.EVENTS_RECEIVED.labels(SOURCE).inc(len(batch))
            accepted, rejected = self._classify(batch, self.registry.current())
            if any(e.reason in REGISTRY_REASONS for e in rejected) and self.registry.reload():
                # A device onboarded a moment ago: look again with the new registry.
                accepted, rejected = self._classify(batch, self.registry.current())
            if rejected:
                await asyncio.to_thread(self.quarantine.add_many, rejected)
                for entry in rejected:
                    metrics.QUARANTINED.labels(SOURCE, entry.reason).inc()
                    metrics.EVENTS_REJECTED.labels(SOURCE, entry.reason).inc()
                    log.info("quarantined %s: %s (%s)", entry.topic, entry.reason, entry.message)
            if accepted:
                results = await self.pipeline.submit([a.record for a in accepted])
                for acc, res in zip(accepted, results, strict=True):
                    if res.duplicate:
                        metrics.EVENTS_DUPLICATE.labels(SOURCE).inc()
                    else:
                        metrics.EVENTS_ACCEPTED.labels(SOURCE, acc.record_class).inc()
            # Durable (or quarantined): now, and only now, the broker may forget them.
            paho_client: paho.Client = client._client
            for message in batch:
                if message.qos > 0:
                    paho_client.ack(message.mid, message.qos)
        except (SpoolError, OSError) as exc:
            # Not acknowledged: the broker delivers these again after the reconnect.
            self._failed = exc
        except Exception as exc:
            log.exception("batch of %d messages failed", len(batch))
            self._failed = exc
        finally:
            self._slots.release()


class _BatchFailed(Exception):
    """A batch could not be committed: reconnect so that the broker redelivers it."""
