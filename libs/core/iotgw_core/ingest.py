"""The ingest pipeline shared by every transport (HTTP, MQTT).

validate -> envelope -> group-committed spool append -> (after the commit)
hand-off to the Redis Stream. The sender may be acknowledged as soon as
:meth:`IngestPipeline.submit` returns: the record is on disk. The stream
hand-off runs behind it, in commit order; if Redis is away the record stays
``Enqueued`` in the spool and the forwarder's reconciler hands it off later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from redis.exceptions import RedisError

from . import metrics, telemetry
from .envelope import GatewayInfo, RecordClass, Source, encode_envelope, envelope_of
from .ids import uuid7_str
from .settings import CommonSettings
from .spool import AppendResult, Committed, NewRecord, Spool, SpoolWriter, State, Totals
from .spool_process import Answer, Counts, HandoffTarget, ProcessSpoolWriter, RawReading
from .stream import RecordStream, StreamEntry, connect
from .tasks import cancel_all
from .validation import Reading, utc_now

log = logging.getLogger(__name__)

_COMMIT_SECONDS = metrics.Observations(metrics.SPOOL_COMMIT_SECONDS)
TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def _checked_traceparent(traceparent: str | None) -> str | None:
    """A W3C ``traceparent`` value as given, or None if it is absent or malformed."""
    if traceparent is not None and not TRACEPARENT_RE.match(traceparent):
        return None
    return traceparent


def _observe_commit(started: float, exemplar: dict[str, str] | None) -> None:
    if exemplar is None:
        _COMMIT_SECONDS.add(time.perf_counter() - started)
    else:
        metrics.SPOOL_COMMIT_SECONDS.observe(time.perf_counter() - started, exemplar=exemplar)


class Refused(Exception):
    """The gateway will not take readings now (draining, spool full or failing)."""

    def __init__(self, code: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Watermarks:
    """Budget marks in records and bytes; above ``high`` ingest refuses until below ``low``."""

    high_records: int
    high_bytes: int
    low_records: int
    low_bytes: int

    @classmethod
    def from_settings(cls, s: CommonSettings) -> Watermarks:
        """Marks as fractions of the spool budget."""
        return cls(
            high_records=int(s.spool_max_records * s.spool_high_water),
            high_bytes=int(s.spool_max_bytes * s.spool_high_water),
            low_records=int(s.spool_max_records * s.spool_low_water),
            low_bytes=int(s.spool_max_bytes * s.spool_low_water),
        )

    def above_high(self, t: Totals) -> bool:
        """True when either budget is at or over its high-water mark."""
        return t.records >= self.high_records or t.bytes >= self.high_bytes

    def below_low(self, t: Totals) -> bool:
        """True when both budgets are under their low-water marks."""
        return t.records < self.low_records and t.bytes < self.low_bytes


class IngestPipeline:
    """Spool, group commit, stream hand-off, backpressure and sink-ack waiting."""

    def __init__(
        self,
        settings: CommonSettings,
        source: Source,
        *,
        commit_max_batch: int = 1024,
        retry_after_s: int = 5,
        ack_mode: Literal["enqueue", "sink"] = "enqueue",
    ) -> None:
        self.settings = settings
        self.source: Source = source
        self.retry_after_s = retry_after_s
        self.ack_mode = ack_mode
        self.gateway = GatewayInfo(id=settings.gateway_id)
        self.spool = Spool(settings.spool_path, synchronous="FULL")
        self.writer: SpoolWriter | ProcessSpoolWriter
        if settings.spool_writer == "process":
            self.writer = ProcessSpoolWriter(
                self.spool,
                max_batch=commit_max_batch,
                on_commit=self._on_commit,
                gateway_id=settings.gateway_id,
                source=source,
                on_handoff_failure=self._handoff_failed,
                on_counts=self._counted,
            )
        else:
            self.writer = SpoolWriter(
                self.spool, max_batch=commit_max_batch, on_commit=self._on_commit
            )
        # Whether the writer process does the ingest's work around the commit: seal
        # raw readings (submit_readings) and hand every commit's records to the
        # stream. Set at start: with tracing on, the ingest span opens around build
        # and the publish spans around the XADD, both here.
        self.seals_in_writer = False
        self.redis = connect(settings.redis_url)
        self.stream = RecordStream(self.redis, settings.stream_key, settings.stream_group)
        self.marks = Watermarks.from_settings(settings)
        self.full = False
        # Refusing readings: while shutting down, or while an operator's drain is on.
        # The operator's drain is a Redis key, so every ingest process (HTTP and
        # MQTT, any replica) follows it within a second.
        self.draining = False
        self.drain_key = f"{settings.stream_key}:draining"
        self._shutting_down = False
        self._operator_drain = False
        self.stream_ok = False
        self.stream_error: str | None = None
        self.totals = Totals(0, 0)
        self._handoff: asyncio.Queue[list[StreamEntry]] = asyncio.Queue()
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.traces = telemetry.RecordTracer(source, settings.stream_key)
        self._reconnects: dict[str, float] = {}  # record id -> device-reported reconnects

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the spool writer and the background loops."""
        if isinstance(self.writer, ProcessSpoolWriter) and not telemetry.enabled():
            self.writer.handoff = HandoffTarget(
                self.settings.redis_url, self.settings.stream_key, self.settings.handoff_linger_s
            )
            self.seals_in_writer = True
        self.writer.start()
        self._set_totals(await asyncio.to_thread(self.spool.totals))
        self._tasks.append(asyncio.create_task(self._handoff_loop(), name="stream-handoff"))
        self._tasks.append(asyncio.create_task(self._budget_loop(), name="spool-budget"))
        if self.ack_mode == "sink":
            self._tasks.append(asyncio.create_task(self._acked_listener(), name="acked-listener"))

    def begin_drain(self) -> None:
        """Refuse new readings from now on: this process is shutting down."""
        self._shutting_down = True
        self._update_draining()

    async def set_operator_drain(self, on: bool) -> None:
        """An operator's drain (or its end) for the whole gateway; RedisError if unreachable."""
        if on:
            await self.redis.set(self.drain_key, "1")
        else:
            await self.redis.delete(self.drain_key)
        self._operator_drain = on
        self._update_draining()

    def _update_draining(self) -> None:
        self.draining = self._shutting_down or self._operator_drain
        metrics.DRAINING.set(1 if self.draining else 0)

    async def _follow_operator_drain(self) -> None:
        try:
            on = bool(await self.redis.exists(self.drain_key))
        except (RedisError, OSError):
            return  # Redis away: keep the last known state
        if on != self._operator_drain:
            log.warning("operator drain %s", "on: refusing readings" if on else "off: accepting")
            self._operator_drain = on
            self._update_draining()

    async def stop(self, handoff_timeout_s: float = 5.0) -> None:
        """Drain: commit what is queued, hand it to the stream, close everything."""
        self.begin_drain()
        await self.writer.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._handoff.join(), handoff_timeout_s)
        await cancel_all(self._tasks)
        await self.redis.aclose()
        self.spool.close()

    # -- admission and building -------------------------------------------------------

    def check_admission(self) -> None:
        """Raise Refused while draining or over the high-water mark."""
        if self.draining:
            raise Refused("draining", "the gateway is draining; retry later", self.retry_after_s)
        if self.full:
            raise Refused(
                "spool_full",
                "the spool is over its high-water mark; retry later",
                self.retry_after_s,
            )

    def build(
        self,
        reading: Reading,
        *,
        device_id: str,
        tenant: str | None = None,
        site: str | None = None,
        record_class: RecordClass = "telemetry",
        traceparent: str | None = None,
    ) -> NewRecord:
        """Wrap a validated reading in an envelope and serialize it for the spool."""
        received_at = utc_now()
        traceparent = _checked_traceparent(traceparent)
        record_id, tenant, site = (
            uuid7_str(),
            tenant or self.settings.tenant,
            site or self.settings.site,
        )
        # With tracing on, the record carries its ingest span's context from here on.
        traceparent = self.traces.start_ingest(
            record_id=record_id,
            tenant=tenant,
            site=site,
            device_id=device_id,
            record_class=record_class,
            seq=reading.seq,
            traceparent=traceparent,
        )
        if "reconnects" in reading.metrics:
            self._reconnects[record_id] = reading.metrics["reconnects"]
        env = envelope_of(
            reading,
            record_id=record_id,
            tenant=tenant,
            site=site,
            device_id=device_id,
            record_class=record_class,
            source=self.source,
            gateway=self.gateway,
            received_at=received_at,
            traceparent=traceparent,
        )
        return NewRecord(
            id=env.id,
            tenant=env.tenant,
            device_id=device_id,
            seq=reading.seq,
            body=encode_envelope(env),
            traceparent=traceparent,
        )

    def raw_reading(
        self,
        body: bytes,
        *,
        device_id: str,
        tenant: str | None = None,
        site: str | None = None,
        traceparent: str | None = None,
    ) -> RawReading:
        """A reading for :meth:`submit_readings`, with the origin and trace context that
        :meth:`build` would give it; the writer process validates and seals the body."""
        return RawReading(
            device_id,
            tenant or self.settings.tenant,
            site or self.settings.site,
            _checked_traceparent(traceparent),
            time.time_ns() // 1_000_000,
            body,
        )

    # -- the durable part ---------------------------------------------------------------

    async def submit(self, records: Sequence[NewRecord]) -> list[AppendResult]:
        """Append records to the spool; returns once they are committed (durable)."""
        started = time.perf_counter()
        if telemetry.enabled():
            with self.traces.commit(records):
                results = await self.writer.append_many(records)
            exemplar = telemetry.current_exemplar()
        else:  # the hot path without tracing: no span bookkeeping at all
            results = await self.writer.append_many(records)
            exemplar = None
        _observe_commit(started, exemplar)
        now = time.time()
        for rec, res in zip(records, results, strict=True):
            reconnects = self._reconnects.pop(rec.id, None) if self._reconnects else None
            metrics.DEVICES.observe(
                rec.tenant,
                rec.device_id,
                rec.seq,
                duplicate=res.duplicate,
                reconnects=reconnects,
                now=now,
            )
        return results

    def submit_readings(self, readings: Sequence[RawReading]) -> asyncio.Future[list[Answer]]:
        """Validate, seal and append raw readings in the writer process (only while
        ``seals_in_writer``); the future is done once the valid ones are committed
        (durable), with what became of each reading. The writer process counts them
        for the device metrics and the commit latency (:meth:`_counted`).

        A future, not a coroutine: every coroutine between the HTTP handler and the
        commit costs its creation and a resumption per request. Raises SpoolError
        at once if the writer cannot take them.
        """
        assert isinstance(self.writer, ProcessSpoolWriter)
        return self.writer.append_readings(readings)

    @staticmethod
    def _counted(counts: Counts) -> None:
        # What the writer process counted of the readings it sealed (on the event loop).
        metrics.DEVICES.merge(counts.devices)
        if counts.commit_hits:
            metrics.add_bucket_counts(
                metrics.SPOOL_COMMIT_SECONDS, counts.commit_hits, counts.commit_sum
            )

    def _on_commit(
        self, records: Sequence[Committed], results: Sequence[AppendResult], totals: Totals
    ) -> None:
        # Runs on the event loop right after a commit, in commit order.
        metrics.SPOOL_COMMIT_BATCH.observe(len(records))
        self._set_totals(totals)
        if self.seals_in_writer:
            return  # the writer process hands them over (HandoffTarget)
        entries = StreamEntry.of_commit(records, results)
        if entries:
            self._handoff.put_nowait(entries)

    def _handoff_failed(self, records: int, error: str) -> None:
        # Committed and acknowledged already: the reconciler re-enqueues them.
        self.stream_ok, self.stream_error = False, error
        metrics.STREAM_HANDOFF_FAILURES.inc(records)
        log.warning("stream hand-off of %d records failed: %s", records, error)

    async def _handoff_loop(self) -> None:
        linger = self.settings.handoff_linger_s
        while True:
            entries = await self._handoff.get()
            if linger and self._handoff.empty() and not self._shutting_down:
                # The commits of the next few milliseconds go out in the same XADD: on
                # the event loop, a Redis command costs more than the records it carries.
                await asyncio.sleep(linger)
            batches = 1
            while not self._handoff.empty() and len(entries) < 5000:
                entries.extend(self._handoff.get_nowait())
                batches += 1
            try:
                with self.traces.handoff(entries):
                    await self.stream.add_many(entries)
                self.stream_ok, self.stream_error = True, None
            except (RedisError, OSError) as exc:
                self._handoff_failed(len(entries), str(exc))
            finally:
                for _ in range(batches):
                    self._handoff.task_done()

    # -- backpressure -------------------------------------------------------------------

    def _set_totals(self, totals: Totals) -> None:
        self.totals = totals
        if not self.full and self.marks.above_high(totals):
            self.full = True
            log.warning("spool over its high-water mark (%s): refusing readings", totals)
        elif self.full and self.marks.below_low(totals):
            self.full = False
            log.info("spool below its low-water mark (%s): accepting again", totals)
        metrics.BACKPRESSURE.set(1 if self.full else 0)
        metrics.SPOOL_BYTES.set(totals.bytes)

    async def _budget_loop(self) -> None:
        # Other processes change the totals too (forwarder pruning, other ingest).
        while True:
            await asyncio.sleep(1.0)
            try:
                totals = await asyncio.to_thread(self.spool.totals)
                if self.marks.above_high(totals) or self.full:
                    # Acked records are delivered: they make room before anyone is refused.
                    excess = totals.records - self.marks.low_records
                    if excess > 0 or totals.bytes >= self.marks.low_bytes:
                        pruned = await asyncio.to_thread(
                            self.spool.prune_oldest_acked, max(excess, 1000)
                        )
                        if pruned:
                            metrics.PRUNED.labels("budget").inc(pruned)
                            totals = await asyncio.to_thread(self.spool.totals)
                self._set_totals(totals)
                await self._follow_operator_drain()
            except Exception:
                log.exception("spool budget check failed")

    # -- ack mode "sink" ------------------------------------------------------------------

    async def wait_delivered(self, results: Sequence[AppendResult], timeout_s: float) -> bool:
        """Wait until every record is Acked by the sink, at most ``timeout_s``."""
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Future[None]] = []
        for res in results:
            if res.state is State.ACKED:
                continue
            fut = self._waiters.get(res.id)
            if fut is None:
                fut = self._waiters[res.id] = loop.create_future()
            pending.append(fut)
        if not pending:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*(asyncio.shield(f) for f in pending)), timeout_s)
            return True
        except TimeoutError:
            # A missed notification must not make a delivered record look undelivered.
            states = await asyncio.to_thread(
                lambda: [self.spool.get(r.id) for r in results if r.state is not State.ACKED]
            )
            return all(s is not None and s.state is State.ACKED for s in states)
        finally:
            for res in results:
                fut = self._waiters.get(res.id)
                if fut is not None and (fut.done() or fut in pending):
                    self._waiters.pop(res.id, None)

    async def _acked_listener(self) -> None:
        # Closed on every way out (an error, the stop): a subscription left open stays
        # subscribed on the server, which keeps queueing every message for it.
        failing = False  # warned once; quiet until a subscription works again
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.stream.acked_channel)
                    if failing:
                        log.info("ack mode sink: subscribed to %s again", self.stream.acked_channel)
                        failing = False
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._delivered(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning(
                        "ack mode sink: the subscription to %s failed (%s); retrying every"
                        " second; until then ack-mode-sink requests wait their full timeout",
                        self.stream.acked_channel,
                        exc,
                    )
                    failing = True
                await asyncio.sleep(1.0)

    def _delivered(self, data: bytes) -> None:
        # Comma-separated record ids (RecordStream.ack). Anything else on the channel
        # names no waiting record and is passed over, without dropping the subscription.
        for record_id in data.decode(errors="replace").split(","):
            fut = self._waiters.get(record_id)
            if fut is not None and not fut.done():
                fut.set_result(None)

    # -- status -----------------------------------------------------------------------------

    async def forwarder_status(self) -> dict[str, object]:
        """What the forwarder last reported about its sink (via Redis), or unknown."""
        try:
            raw = await self.redis.get(self.stream.status_key)
        except (RedisError, OSError) as exc:
            return {"status": "unknown", "error": f"redis: {exc}"}
        if raw is None:
            return {"status": "unknown", "error": "no forwarder has reported"}
        report: dict[str, object] = json.loads(raw)
        return report
