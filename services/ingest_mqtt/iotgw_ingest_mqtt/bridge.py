"""MQTT ingest: the edge broker's device topics into the durable spool.

One persistent MQTT v5 session (clean start off, session expiry) holds a QoS 1
subscription to ``v1/+/+/+/+``; the broker queues for the session while the
ingest is away. With ``IOTGW_MQTT_SHARE_GROUP`` set it is the shared
subscription ``$share/<group>/v1/+/+/+/+`` and replicas with their own client
ids split the messages. Mosquitto 2.0.11 restores a plain subscription from
its persistence after a restart but not a shared one: messages published
between the broker's restart and the ingest's re-subscription would be lost,
which is why one replica uses the plain subscription (docs/mqtt.md).

**PUBACK after commit.** The connection (:mod:`.wire`, a lean MQTT v5
subscriber) acknowledges nothing by itself: the bridge sends the PUBACKs of a
batch once its spool transaction has committed (or its quarantine entries are
written). A crash between receipt and commit leaves the message
unacknowledged and the broker delivers it again to the session.

**Backpressure.** While the spool is over its high-water mark (or the service
drains), the bridge stops taking messages from the client's queue; with no
PUBACKs the broker stops at the Receive Maximum in flight and queues the rest
for the session. Reading resumes below the low-water mark.

**Reconnect loop.** A new connection each time, with a doubling delay:
messages received on a dead connection carry packet ids of that connection
and are never acknowledged on the next one (the broker redelivers them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Final, cast

import msgspec
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
    parse_reading,
)

from . import wire

log = logging.getLogger(__name__)
SOURCE: Final = "mqtt"
# Reasons that a registry change (a device added or moved) can cure.
REGISTRY_REASONS = frozenset({"unknown_device", "tenant_mismatch", "site_mismatch"})


class Accepted(msgspec.Struct, frozen=True):
    """A message that becomes a record."""

    record: NewRecord
    record_class: RecordClass


def user_properties(message: wire.Publish) -> dict[str, str]:
    """MQTT v5 user properties of a message (the last value of a repeated name)."""
    return dict(message.user_properties) if message.user_properties else {}


def classify(
    message: wire.Publish,
    registry: Registry,
    pipeline: IngestPipeline,
    *,
    max_payload: int,
    client_id: str,
) -> Accepted | QuarantineEntry:
    """Check topic, registry and payload; a record to commit or a quarantine entry."""
    topic, payload = message.topic, message.payload

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
        reading = parse_reading(payload)
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

    async def _connect(self) -> wire.Connection:
        return await wire.open_connection(
            self.host,
            self.port,
            client_id=self.client_id,
            username=self.username or None,
            password=self.password or None,
            keepalive_s=self.keepalive_s,
            clean_start=False,  # keep the session (subscription, queue) across restarts
            session_expiry_s=self.session_expiry_s,
            receive_maximum=self.receive_maximum,
            max_queued=max(self.receive_maximum, self.max_batch) * 2,
            timeout_s=10.0,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, consume, reconnect with a doubling delay, until ``stop`` is set."""
        delay = self.reconnect_min_s
        while not stop.is_set():
            conn: wire.Connection | None = None
            try:
                conn = await self._connect()
                metrics.MQTT_CONNECTS.inc()
                metrics.MQTT_CONNECTED.set(1)
                log.info(
                    "connected to %s:%d as %s (session present: %s); subscribing %s",
                    self.host,
                    self.port,
                    self.client_id,
                    conn.session_present,
                    self.subscription,
                )
                await conn.subscribe(self.subscription, qos=1)
                self.connected.set()
                delay = self.reconnect_min_s
                await self._consume(conn, stop)
                await self._settle()
            except wire.MqttError as exc:
                log.warning("MQTT connection lost: %s; reconnecting in %.1fs", exc, delay)
            except _BatchFailed as exc:
                log.error("committing a batch failed (%s); reconnecting in %.1fs", exc, delay)
            finally:
                self.connected.clear()
                metrics.MQTT_CONNECTED.set(0)
                await self._settle()
                if conn is not None:
                    await conn.close()
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

    async def _consume(self, conn: wire.Connection, stop: asyncio.Event) -> None:
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if self._failed is not None:
                    raise _BatchFailed(str(self._failed))
                await self._admitted(stop)
                if stop.is_set():
                    return
                if conn.pending:  # no wait: take what has arrived
                    batch = await conn.batch(self.max_batch)
                else:
                    nxt = asyncio.ensure_future(conn.batch(self.max_batch))
                    done, _ = await asyncio.wait(
                        {nxt, stopped}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if nxt not in done:
                        nxt.cancel()
                        with contextlib.suppress(asyncio.CancelledError, wire.MqttError):
                            await nxt
                        return
                    batch = nxt.result()
                await self._slots.acquire()
                task = asyncio.create_task(self._handle(conn, batch))
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)
        finally:
            stopped.cancel()

    def _classify(
        self, batch: Sequence[wire.Publish], registry: Registry
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

    async def _handle(self, conn: wire.Connection, batch: Sequence[wire.Publish]) -> None:
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
                counts: Counter[str | None] = Counter(
                    None if res.duplicate else acc.record_class
                    for acc, res in zip(accepted, results, strict=True)
                )
                for record_class, n in counts.items():
                    if record_class is None:
                        metrics.EVENTS_DUPLICATE.labels(SOURCE).inc(n)
                    else:
                        metrics.EVENTS_ACCEPTED.labels(SOURCE, record_class).inc(n)
            # Durable (or quarantined): now, and only now, the broker may forget them.
            conn.ack([m.packet_id for m in batch if m.qos])
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
