"""The forwarder: stream -> spool -> sink -> Acked | Dead, per-device order kept.

Each device has a lane of pending records sorted by spool rid (commit
order). A sink call takes the ready head of every lane; a device whose
record failed waits out its backoff while other devices go on. The spool
is the truth: a stream entry only says "look at rid N"; an entry whose record
is already Acked or Dead is just acknowledged.

A record goes to the sink only once every pending record older than it is
in memory too (``seen_upto``): the stream may have lost an older one's
entry (Redis restarted empty), and delivering the newer record first would
break its device's order. After each read the forwarder looks up, by rid,
the pending records between what it had seen and the newest it took, and
takes those the stream did not name.

The spool calls of every round (load, that lookup of older pending records,
mark InFlight, mark Acked) run on the
event loop, not on a worker thread: a batch's call takes a few milliseconds,
during which the loop has nothing else to do (a round waits for each of them
anyway), and the thread hop around it (submit, wake the worker, wake the
loop through its self-pipe) took 15-20% of the forwarder's CPU in py-spy.
Rarer and longer calls (loading records the stream lost, retention, gauges,
the reconciler's scans, the failure paths) stay on threads.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from iotgw_core import metrics, telemetry
from iotgw_core.retry import RetryPolicy
from iotgw_core.sink import Outcome, Sink, SinkUnavailable, skip_after_failure
from iotgw_core.spool import Spool, State, StoredRecord
from iotgw_core.stream import RecordStream, StreamEntry, connect
from iotgw_core.tasks import cancel_all
from redis.exceptions import RedisError, ResponseError

from .settings import ForwarderSettings
from .sinks.common import RecordBudget

log = logging.getLogger(__name__)
DeviceKey = tuple[str, str]
_LIVE = (State.ENQUEUED, State.INFLIGHT)


@dataclass(slots=True)
class Pending:
    """A record waiting in its device's lane, with the stream entries that name it."""

    record: StoredRecord
    entry_ids: list[str] = field(default_factory=list)

    def __lt__(self, other: Pending) -> bool:
        return self.record.rid < other.record.rid


class Forwarder:
    """Reads the record stream with a consumer group and delivers to one sink."""

    def __init__(
        self,
        settings: ForwarderSettings,
        sink: Sink,
        *,
        spool: Spool | None = None,
        stream: RecordStream | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        # NORMAL: a power cut may roll back the last Acked marks -> re-delivery, never loss.
        self.spool = spool or Spool(settings.spool_path, synchronous="NORMAL")
        self.stream = stream or RecordStream(
            connect(settings.redis_url), settings.stream_key, settings.stream_group
        )
        self.consumer = settings.consumer_name
        self.policy = RetryPolicy(
            settings.retry_base_s, settings.retry_cap_s, settings.retry_max_attempts
        )
        self.lanes: dict[DeviceKey, list[Pending]] = {}
        self.items: dict[int, Pending] = {}
        # Every Enqueued/InFlight record with a rid up to seen_upto is in items;
        # taken_upto: the newest rid taken. Records above seen_upto wait (_see_older).
        self.seen_upto = 0
        self.taken_upto = 0
        self.not_before: dict[DeviceKey, float] = {}
        self.unavailable_until = 0.0
        self.unavailable_failures = 0
        self.sink_error: str | None = None
        self.redis_error: str | None = None
        self._ack_backlog: list[str] = []
        # An entry names a whole commit batch: it is acknowledged once every
        # record it names is done (count of record mentions still open).
        self._entry_refs: dict[str, int] = {}
        self._stopping = asyncio.Event()
        self._reconcile_now = asyncio.Event()
        self._own_pending_done = False
        self.traces = telemetry.RecordTracer("forwarder", self.stream.key)
        # Operations (docs/admin-api.md): an admin pause flag in Redis, and a
        # cap on how fast a backlog drains so that live data is not starved.
        self.paused = False
        self.pause_key = f"{settings.stream_key}:paused"
        self.backlog_budget = (
            RecordBudget(settings.backlog_max_rate) if settings.backlog_max_rate > 0 else None
        )
        self._paced_out = False

    # -- life cycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the delivery in progress and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Forward until stopped."""
        await self.sink.start()
        background = [
            asyncio.create_task(self._reconcile_loop(), name="reconciler"),
            asyncio.create_task(self._maintenance_loop(), name="maintenance"),
            asyncio.create_task(self._reclaim_loop(), name="reclaimer"),
            asyncio.create_task(self._pause_loop(), name="pause-flag"),
        ]
        try:
            while not self._stopping.is_set():
                await self.step()
        finally:
            await cancel_all(background)
            await self._flush_acks()
            await self.sink.close()
            with contextlib.suppress(Exception):
                await self.stream.client.aclose()
            log.info("forwarder stopped with %d records pending in memory", len(self.items))

    async def step(self) -> None:
        """One round: read what is new (if there is room), deliver what is ready."""
        await self._flush_acks()
        if self.paused:
            await asyncio.sleep(min(0.5, self.settings.pause_poll_s))
            return
        trickle = False
        if len(self.items) < self.settings.max_pending_records:
            entries = await self._read(block_ms=None if self._ready_now() else self._idle_ms())
            if entries:
                self._take(entries)
                trickle = len(entries) < self.settings.forward_batch
        elif not self._ready_now():
            await asyncio.sleep(min(1.0, self._idle_ms() / 1000))
        if self.taken_upto > self.seen_upto:
            await self._see_older()
        batch = self._ready_batch()
        if batch:
            await self._deliver(batch)
            if trickle and self.settings.forward_linger_s:
                # The stream had less than a batch: let the next one gather for a
                # moment, so that one sink call, one read and two spool transactions
                # carry many records, not a few (every spool transaction briefly
                # holds the write lock that ingest needs; every Redis command and
                # thread hop costs the event loop 60-170 us).
                await asyncio.sleep(self.settings.forward_linger_s)
        elif self._paced_out:
            await asyncio.sleep(0.05)  # the backlog budget refills

    # -- reading ------------------------------------------------------------------------------

    async def _read(self, block_ms: int | None) -> list[StreamEntry]:
        try:
            if not self._own_pending_done:
                # After a restart: first what this consumer had read but not acknowledged.
                await self.stream.ensure_group()
                entries = await self.stream.read(
                    self.consumer, self.settings.forward_batch, None, own_pending=True
                )
                if len(entries) < self.settings.forward_batch:
                    self._own_pending_done = True
                    self._reconcile_now.set()
                return [e for e in entries if e.rid not in self.items]
            entries = await self.stream.read(self.consumer, self.settings.forward_batch, block_ms)
            self.redis_error = None
            return entries
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                # Redis lost the stream (restarted empty): rebuild it from the spool.
                log.warning("stream group missing (Redis restarted empty?): reconciling")
                with contextlib.suppress(RedisError, OSError):
                    await self.stream.ensure_group()
                self._reconcile_now.set()
            else:
                log.warning("stream read failed: %s", exc)
            self.redis_error = str(exc)
        except (RedisError, OSError) as exc:
            if self.redis_error is None:
                log.warning("stream unreachable: %s", exc)
            self.redis_error = str(exc)
            self._own_pending_done = False
            self._reconcile_now.set()
        if not self._ready_now():
            await asyncio.sleep(0.5)
        return []

    def _take(self, entries: Sequence[StreamEntry]) -> None:
        """Put the records named by ``entries`` into their device lanes, in rid order."""
        named: dict[int, list[str]] = {}
        refs, items = self._entry_refs, self.items
        for entry in entries:
            entry_id = entry.entry_id
            refs[entry_id] = refs.get(entry_id, 0) + 1
            known = items.get(entry.rid)
            if known is not None:
                known.entry_ids.append(entry_id)
            elif (ids := named.get(entry.rid)) is not None:
                ids.append(entry_id)
            else:
                named[entry.rid] = [entry_id]
        if not named:
            return
        loaded = self.spool.load(sorted(named))
        by_rid = {rec.rid: rec for rec in loaded}
        for rid, entry_ids in named.items():
            rec = by_rid.get(rid)
            if rec is None or rec.state not in _LIVE:
                self._release(entry_ids)  # nothing left to do for it
        live = [r for r in loaded if r.state in _LIVE]
        if live:  # ``loaded`` is in rid order
            self.taken_upto = max(self.taken_upto, live[-1].rid)
        self._place(live, named)

    def _place(self, records: Sequence[StoredRecord], named: dict[int, list[str]]) -> None:
        """Put records (with the stream entries that named them) into their device lanes."""
        items, lanes = self.items, self.lanes
        for rec in records:
            if rec.rid in items:
                continue
            pending = Pending(rec, named.get(rec.rid, []))
            items[rec.rid] = pending
            lane = lanes.get(rec.device_key)
            if lane is None:
                lanes[rec.device_key] = [pending]
            elif lane[-1].record.rid < rec.rid:
                lane.append(pending)  # the usual case: newer than all the lane holds
            else:
                bisect.insort(lane, pending)

    async def _see_older(self) -> None:
        """Take the pending records up to ``taken_upto`` that are not in memory (the
        stream lost their entries), oldest first; then move ``seen_upto`` up.

        One indexed lookup by rid for all devices: in the usual case it finds just
        the records the last read took. It takes at most what memory has room for
        (and at least a sink call's worth), so a large loss is taken over several
        rounds, in rid order; until then the newer records wait.
        """
        limit = max(
            self.settings.forward_batch, self.settings.max_pending_records - len(self.items)
        )
        upto = self.taken_upto
        rids = self.spool.pending_rids_between(self.seen_upto, upto, limit)
        seen = rids[-1] if len(rids) == limit else upto
        missing = [rid for rid in rids if rid not in self.items]
        if missing:
            older = await asyncio.to_thread(self.spool.load, missing)
            self._place([r for r in older if r.state in _LIVE], {})
        # Only now: a round on another task must not deliver past records not yet placed.
        self.seen_upto = max(self.seen_upto, seen)

    # -- delivering ---------------------------------------------------------------------------

    def _ready_now(self) -> bool:
        now = time.monotonic()
        if now < self.unavailable_until:
            return False
        return any(lane and self.not_before.get(k, 0.0) <= now for k, lane in self.lanes.items())

    def _idle_ms(self) -> int:
        now = time.monotonic()
        wake = [t for k, t in self.not_before.items() if self.lanes.get(k)]
        if self.lanes and self.unavailable_until > now:
            wake.append(self.unavailable_until)
        if not wake:
            return 1000
        return max(1, min(1000, int((min(wake) - now) * 1000)))

    def _ready_batch(self) -> list[Pending]:
        now = time.monotonic()
        if now < self.unavailable_until:
            return []
        batch: list[Pending] = []
        backlog_cutoff = time.time() - self.settings.backlog_age_s
        lanes = list(self.lanes.items())
        if self.settings.backlog_live_first:
            # Devices whose next record is live go first (their own order still holds).
            lanes.sort(key=lambda kv: bool(kv[1]) and kv[1][0].record.created_at < backlog_cutoff)
        budget = self.backlog_budget.available() if self.backlog_budget else None
        spent = 0
        self._paced_out = False
        seen = self.seen_upto
        for key, lane in lanes:
            if not lane or self.not_before.get(key, 0.0) > now or lane[0].record.rid > seen:
                continue
            room = self.settings.forward_batch - len(batch)
            take = lane[: min(room, self.settings.forward_batch_per_device)]
            if take[-1].record.rid > seen:  # not until every older record is here
                take = [p for p in take if p.record.rid <= seen]
            if budget is not None:
                allowed = 0
                for pending in take:
                    if pending.record.created_at < backlog_cutoff:
                        if spent >= budget:
                            self._paced_out = True
                            break
                        spent += 1
                    allowed += 1
                take = take[:allowed]
            batch.extend(take)
            if len(batch) >= self.settings.forward_batch:
                break
        if self.backlog_budget is not None and spent:
            self.backlog_budget.spend(spent)
        return batch

    async def _deliver(self, batch: list[Pending]) -> None:
        records = [p.record for p in batch]
        rids = [r.rid for r in records]
        self.spool.mark_inflight(rids)
        with self.traces.deliver(records, self.sink.name, self.stream.group) as spans:
            try:
                answers = await self.sink.deliver(records)
            except SinkUnavailable as exc:
                spans.failed(str(exc))
                await self._sink_unavailable(rids, str(exc))
                return
            except Exception as exc:
                log.exception("sink %s raised; treating it as unavailable", self.sink.name)
                spans.failed(repr(exc))
                await self._sink_unavailable(rids, f"sink error: {exc!r}")
                return
            self.unavailable_failures = 0
            self.sink_error = None
            answers = skip_after_failure(records, list(answers))
            spans.outcomes(records, answers)
            await self._settle(batch, answers)

    async def _sink_unavailable(self, rids: list[int], error: str) -> None:
        self.unavailable_failures += 1
        ceiling = min(
            self.settings.unavailable_cap_s,
            self.settings.retry_base_s * 2 ** min(self.unavailable_failures - 1, 20),
        )
        self.unavailable_until = time.monotonic() + random.uniform(ceiling / 2, ceiling)
        if self.sink_error != error:
            log.warning("sink %s unavailable: %s", self.sink.name, error)
        self.sink_error = error
        metrics.FORWARD_ATTEMPTS.labels(self.sink.name, "unavailable").inc(len(rids))
        await asyncio.to_thread(self.spool.note_error, rids, error)

    async def _settle(self, batch: list[Pending], answers: Sequence[object]) -> None:
        acked: list[Pending] = []
        skipped: list[int] = []
        dead: dict[str, list[Pending]] = {}
        retry: dict[str, list[Pending]] = {}
        for pending, answer in zip(batch, answers, strict=True):
            outcome = answer.outcome  # type: ignore[attr-defined]
            error = answer.error or ""  # type: ignore[attr-defined]
            if outcome is Outcome.DELIVERED:
                acked.append(pending)
            elif outcome is Outcome.REJECT:
                dead.setdefault(error, []).append(pending)
            elif outcome is Outcome.RETRY:
                if self.policy.exhausted(pending.record.attempts + 1):
                    reason = f"attempts exhausted ({pending.record.attempts + 1}): {error}"
                    dead.setdefault(reason, []).append(pending)
                else:
                    retry.setdefault(error, []).append(pending)
            else:
                skipped.append(pending.record.rid)
        sink = self.sink.name
        if acked:
            self.spool.mark_acked([p.record.rid for p in acked])
            metrics.FORWARD_ATTEMPTS.labels(sink, "delivered").inc(len(acked))
            now = time.time()
            if telemetry.enabled():  # exemplars (trace ids) go with single observations
                for p in acked:
                    metrics.INGEST_TO_ACK_SECONDS.observe(
                        max(0.0, now - p.record.created_at),
                        exemplar=telemetry.exemplar_of(p.record.traceparent),
                    )
            else:
                metrics.observe_many(
                    metrics.INGEST_TO_ACK_SECONDS,
                    [max(0.0, now - p.record.created_at) for p in acked],
                )
        for error, items in dead.items():
            await asyncio.to_thread(self.spool.mark_dead, [p.record.rid for p in items], error)
            metrics.DEAD_LETTERS.labels(error.split(":", 1)[0][:60]).inc(len(items))
            metrics.FORWARD_ATTEMPTS.labels(sink, "reject").inc(len(items))
            for p in items:
                log.warning("record %s (%s) is Dead: %s", p.record.id, p.record.device_id, error)
        for error, items in retry.items():
            await asyncio.to_thread(self.spool.record_failure, [p.record.rid for p in items], error)
            metrics.FORWARD_ATTEMPTS.labels(sink, "retry").inc(len(items))
            for p in items:
                attempts = p.record.attempts + 1
                p.record = msgspec.structs.replace(
                    p.record, state=State.ENQUEUED, attempts=attempts, last_error=error
                )
                self.not_before[p.record.device_key] = time.monotonic() + self.policy.delay(
                    attempts
                )
        if skipped:
            await asyncio.to_thread(self.spool.requeue, skipped)
        finished = acked + [p for items in dead.values() for p in items]
        self._forget(finished)
        for p in finished:
            self._release(p.entry_ids)
        # XACK (the spool says Acked/Dead now) and the word to waiting ack-mode-sink
        # requests, in one round trip.
        await self._flush_acks(acked_records=[p.record.id for p in acked])

    def _release(self, entry_ids: Sequence[str]) -> None:
        """One record of each entry is done; acknowledge entries with none left."""
        for entry_id in entry_ids:
            left = self._entry_refs.get(entry_id, 1) - 1
            if left > 0:
                self._entry_refs[entry_id] = left
            else:
                self._entry_refs.pop(entry_id, None)
                self._ack_backlog.append(entry_id)

    def _forget(self, finished: Sequence[Pending]) -> None:
        """Drop finished records from memory and from their lanes."""
        by_lane: dict[DeviceKey, list[Pending]] = {}
        for pending in finished:
            self.items.pop(pending.record.rid, None)
            key = pending.record.device_key
            if (done := by_lane.get(key)) is not None:
                done.append(pending)
            else:
                by_lane[key] = [pending]
        for key, done in by_lane.items():
            lane = self.lanes.get(key)
            if lane is None:
                continue
            n = len(done)
            if n <= len(lane) and all(a is b for a, b in zip(lane[:n], done, strict=True)):
                del lane[:n]  # the usual case: the lane's head, in order
            else:
                gone = {id(p) for p in done}
                lane[:] = [p for p in lane if id(p) not in gone]
            if not lane:
                del self.lanes[key]
                self.not_before.pop(key, None)

    async def _flush_acks(self, acked_records: Sequence[str] = ()) -> None:
        if not self._ack_backlog and not acked_records:
            return
        entry_ids, self._ack_backlog = self._ack_backlog, []
        try:
            await self.stream.ack(entry_ids, acked_records=acked_records)
        except (RedisError, OSError) as exc:
            # The spool already says Acked/Dead; the entries are acknowledged later.
            self._ack_backlog = entry_ids + self._ack_backlog
            self.redis_error = str(exc)

    # -- background duties ----------------------------------------------------------------------

    async def reconcile_once(self) -> int:
        """Re-enqueue spool records that are Enqueued/InFlight but have no stream entry."""
        in_stream = await self.stream.record_ids()
        cutoff = time.time() - self.settings.reconcile_grace_s
        after = 0
        added = 0
        while True:
            rows = await asyncio.to_thread(self.spool.pending_after, after, 5000, cutoff)
            if not rows:
                break
            missing = [
                StreamEntry(rid, rid_id, tenant, device, tp)
                for rid, rid_id, tenant, device, tp in rows
                if rid_id not in in_stream and rid not in self.items
            ]
            await self.stream.add_many(missing)
            added += len(missing)
            after = rows[-1][0]
        if added:
            metrics.RECONCILED.inc(added)
            log.info("reconciler re-enqueued %d records the stream had lost", added)
        return added

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._reconcile_now.wait(), self.settings.reconcile_interval_s
                )
            self._reconcile_now.clear()
            try:
                await self.stream.ensure_group()
                await self.reconcile_once()
            except (RedisError, OSError) as exc:
                log.debug("reconcile skipped: %s", exc)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("reconcile failed")

    async def _reclaim_loop(self) -> None:
        idle_ms = int(self.settings.reclaim_idle_s * 1000)
        while True:
            await asyncio.sleep(max(1.0, self.settings.reclaim_idle_s / 2))
            if len(self.items) >= self.settings.max_pending_records:
                continue
            try:
                claimed = await self.stream.claim_stale(
                    self.consumer, idle_ms, self.settings.forward_batch
                )
            except (RedisError, OSError) as exc:
                log.debug("reclaim skipped: %s", exc)
                continue
            foreign = [e for e in claimed if e.rid not in self.items]
            if foreign:
                metrics.RECLAIMED.inc(len(foreign))
                log.info("took over %d stale stream entries", len(foreign))
            if claimed:
                self._take(claimed)

    async def _pause_loop(self) -> None:
        while True:
            try:
                paused = bool(await self.stream.client.exists(self.pause_key))
                if paused != self.paused:
                    log.warning("delivery %s by the admin API", "paused" if paused else "resumed")
                self.paused = paused
            except (RedisError, OSError) as exc:
                log.debug("pause flag unreadable: %s", exc)
            await asyncio.sleep(self.settings.pause_poll_s)

    async def _maintenance_loop(self) -> None:
        last_prune = 0.0
        while True:
            try:
                await self._report_status()
                if time.monotonic() - last_prune >= self.settings.prune_interval_s:
                    last_prune = time.monotonic()
                    await self.prune_once()
                await self._update_gauges()
            except Exception as exc:
                log.debug("maintenance round failed: %s", exc)
            await asyncio.sleep(2.0)

    async def prune_once(self) -> int:
        """Delete Acked records older than the retention window, in bounded chunks."""
        cutoff = time.time() - self.settings.acked_retention_s
        total = 0
        for _ in range(100):
            pruned = await asyncio.to_thread(self.spool.prune_acked, cutoff, 5000)
            total += pruned
            if pruned < 5000:
                break
        if total:
            metrics.PRUNED.labels("retention").inc(total)
        return total

    async def _update_gauges(self) -> None:
        metrics.SINK_UP.labels(self.sink.name).set(0 if self.sink_error else 1)
        counts = await asyncio.to_thread(self.spool.counts_by_state)
        for label, count in counts.items():
            metrics.SPOOL_RECORDS.labels(label).set(count)
        oldest = await asyncio.to_thread(self.spool.oldest_pending_created_at)
        metrics.SPOOL_OLDEST_PENDING_AGE.set(0 if oldest is None else time.time() - oldest)
        totals = await asyncio.to_thread(self.spool.totals)
        metrics.SPOOL_BYTES.set(totals.bytes)
        with contextlib.suppress(RedisError, OSError):
            metrics.STREAM_LENGTH.set(await self.stream.length())

    def status(self) -> dict[str, object]:
        """What /healthz of the ingest service shows about the sink and the forwarder."""
        if self.sink_error is not None:
            state = "unavailable"
        elif self.redis_error is not None:
            state = "degraded"
        else:
            state = "ok"
        return {
            "status": state,
            "consumer": self.consumer,
            "pending_in_memory": len(self.items),
            "paused": self.paused,
            "sink": self.sink.status(),
            "sink_error": self.sink_error,
            "reported_at": time.time(),
        }

    async def _report_status(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.stream.client.set(self.stream.status_key, json.dumps(self.status()), ex=10)
