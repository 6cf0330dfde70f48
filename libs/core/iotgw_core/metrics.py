"""Prometheus metrics of the gateway; every one is listed in docs/metrics.md.

Counts taken once per reading on an ingest's event loop (readings received,
accepted, per device, commit latency) are kept in plain Python numbers
(:class:`Tally`, :class:`DeviceMetrics`, :class:`Observations`) and added to
their Prometheus metrics when the registry is collected, i.e. at every scrape:
a Prometheus ``inc`` checks its arguments and takes a lock, several times per
request on a loop that serves thousands of requests a second. A scrape sees
every count made before it; nothing else reads these metrics.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .counts import LATENCY_BUCKETS, Baselines, DeviceDelta, count_reading


class _FlushOnCollect(Collector):
    """Adds the pending plain counts to their metrics; collected before any of them.

    The default registry collects in registration order, and this is registered
    before every metric of this module.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a scrape thread and the event loop may both collect
        self.hooks: list[Callable[[], None]] = []  # each adds its pending counts

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            for flush_pending in self.hooks:
                flush_pending()
        return iter(())

    def describe(self) -> Iterable[Metric]:
        return []  # no metric of its own (and no collect() at registration)


_FLUSH = _FlushOnCollect()
REGISTRY.register(_FLUSH)


def flush() -> None:
    """Add every pending plain count to its metric now (collecting the registry does this)."""
    _FLUSH.collect()


class Tally:
    """A count on a hot path: ``tally.count += n``, added to a counter child when collected.

    Only the owning event loop increments ``count``; a flush reads it (an atomic
    read of an int) and adds the difference to the last flushed value, so a
    flush on a scrape thread loses no increment.
    """

    __slots__ = ("_child", "_flushed", "count")

    def __init__(self, child: Counter) -> None:
        self.count = 0
        self._child = child
        self._flushed = 0
        _FLUSH.hooks.append(self.flush)

    def flush(self) -> None:
        """Add the increments since the last flush to the counter."""
        count = self.count
        if count != self._flushed:
            self._child.inc(count - self._flushed)
            self._flushed = count


class Observations:
    """Histogram observations queued on a hot path and observed in bulk when collected.

    At most ``limit`` wait: the next ``add`` observes them all (so a process
    that nobody scrapes does not grow). Observations that carry an exemplar go
    straight to ``histogram.observe``.
    """

    def __init__(self, histogram: Histogram, limit: int = 4096) -> None:
        self.histogram = histogram
        self.limit = limit
        self._queue: deque[float] = deque()  # append / popleft are atomic: no lock needed
        _FLUSH.hooks.append(self.flush)

    def add(self, amount: float) -> None:
        """Queue one observation."""
        self._queue.append(amount)
        if len(self._queue) >= self.limit:
            self.flush()

    def flush(self) -> None:
        """Observe what is queued."""
        queue = self._queue

        def drain() -> Iterator[float]:
            while True:
                try:
                    yield queue.popleft()
                except IndexError:
                    return

        observe_many(self.histogram, drain())


EVENTS_RECEIVED = Counter(
    "gateway_events_received",
    "Readings received by an ingest service, valid or not.",
    ["source"],
)
EVENTS_ACCEPTED = Counter(
    "gateway_events_accepted",
    "Readings committed to the spool (new records, duplicates excluded).",
    ["source", "record_class"],
)
EVENTS_DUPLICATE = Counter(
    "gateway_events_duplicate",
    "Readings acknowledged as repeats of an already stored (tenant, device_id, seq).",
    ["source"],
)
EVENTS_REJECTED = Counter(
    "gateway_events_rejected",
    "Readings refused, by reason (validation code, spool_full, draining, ...).",
    ["source", "reason"],
)
SPOOL_COMMIT_SECONDS = Histogram(
    "gateway_spool_commit_seconds",
    "Time from a reading's arrival at the spool writer to its committed transaction.",
    buckets=LATENCY_BUCKETS,
)
SPOOL_COMMIT_BATCH = Histogram(
    "gateway_spool_commit_batch_records",
    "Records per group-commit transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
SPOOL_RECORDS = Gauge("gateway_spool_records", "Records held in the spool, by state.", ["state"])
SPOOL_BYTES = Gauge("gateway_spool_bytes", "Bytes of envelopes held in the spool (all states).")
SPOOL_OLDEST_PENDING_AGE = Gauge(
    "gateway_spool_oldest_pending_age_seconds",
    "Age of the oldest Enqueued or InFlight record (0 when none).",
)
BACKPRESSURE = Gauge(
    "gateway_backpressure_active", "1 while ingest refuses because the spool is over its mark."
)
DRAINING = Gauge("gateway_draining", "1 while the service drains and refuses new readings.")
STREAM_HANDOFF_FAILURES = Counter(
    "gateway_stream_handoff_failures",
    "Records committed but not handed to the stream (the reconciler re-enqueues them).",
)
FORWARD_ATTEMPTS = Counter(
    "gateway_forward_attempts",
    "Delivery attempts by sink and outcome (delivered, retry, reject, unavailable).",
    ["sink", "outcome"],
)
DEAD_LETTERS = Counter("gateway_dead_letters", "Records that became Dead, by reason.", ["reason"])
INGEST_TO_ACK_SECONDS = Histogram(
    "gateway_ingest_to_ack_seconds",
    "Time from a record's commit to the spool to the sink's acknowledgement.",
    buckets=LATENCY_BUCKETS,
)
RECONCILED = Counter(
    "gateway_reconciled_records",
    "Spool records put back on the stream because the stream had lost them.",
)
RECLAIMED = Counter(
    "gateway_reclaimed_entries", "Stream entries taken over from a dead consumer (XAUTOCLAIM)."
)
PRUNED = Counter("gateway_pruned_records", "Acked records deleted from the spool.", ["why"])
STREAM_LENGTH = Gauge(
    "gateway_stream_length", "Entries in the record stream (handed off, not yet done)."
)
QUARANTINED = Counter(
    "gateway_quarantined",
    "Messages put in the quarantine instead of the spool, by source and reason.",
    ["source", "reason"],
)
MQTT_CONNECTED = Gauge(
    "gateway_mqtt_connected", "1 while the MQTT ingest holds its session with the edge broker."
)
MQTT_CONNECTS = Counter(
    "gateway_mqtt_connects", "Connections of the MQTT ingest to the edge broker (first and later)."
)
MQTT_PAUSED = Gauge(
    "gateway_mqtt_paused",
    "1 while the MQTT ingest stops taking messages (spool over its high-water mark, draining).",
)
AUTH_FAILURES = Counter(
    "gateway_auth_failures",
    "Requests refused for their credential (401 unauthorized, 403 forbidden).",
    ["source", "code"],
)
SINK_PUBLISHES = Counter(
    "gateway_sink_publishes",
    "Publishes acknowledged by a cloud sink, per connection (one may carry several records).",
    ["sink", "connection"],
)
SINK_PUBLISH_RATE = Gauge(
    "gateway_sink_publish_rate",
    "Publishes per second of one sink connection over the last 5 s (AWS IoT allows ~100).",
    ["sink", "connection"],
)
SINK_CONNECTED = Gauge(
    "gateway_sink_connected", "1 while a sink connection is up.", ["sink", "connection"]
)

# -- per-device metrics (dashboards "devices" and "gateway overview") ----------------------
# A label per device is what lets an operator find the one device that went
# quiet, but every label value is a time series held by Prometheus: the first
# DEVICE_LABEL_LIMIT devices a process sees get their own series, every later
# device is counted under device_id="_other" (and gateway_device_label_overflow
# counts its readings). Set the limit with IOTGW_METRICS_MAX_DEVICES
# (docs/observability.md, "Label cardinality").
OTHER_DEVICES = "_other"

DEVICE_RECORDS = Counter(
    "gateway_device_records",
    "Readings of one device committed to the spool (duplicates excluded).",
    ["tenant", "device_id"],
)
DEVICE_LAST_SEEN = Gauge(
    "gateway_device_last_seen_timestamp_seconds",
    "Unix time of the last reading of one device that the gateway committed.",
    ["tenant", "device_id"],
)
DEVICE_SEQ_GAPS = Counter(
    "gateway_device_seq_gaps",
    "Sequence numbers a device skipped (seq jumped past last seq + 1): readings lost upstream.",
    ["tenant", "device_id"],
)
DEVICE_DUPLICATES = Counter(
    "gateway_device_duplicates",
    "Readings of one device acknowledged again as repeats of a stored (tenant, device_id, seq).",
    ["tenant", "device_id"],
)
DEVICE_RECONNECTS = Counter(
    "gateway_device_reconnects",
    "Reconnects of a device to its broker or network, from its `reconnects` reading metric.",
    ["tenant", "device_id"],
)
DEVICE_LABEL_OVERFLOW = Counter(
    "gateway_device_label_overflow",
    'Readings counted under device_id="_other" because the device label limit was reached.',
)
SINK_UP = Gauge(
    "gateway_sink_up",
    "1 while the forwarder's sink (the uplink) accepts deliveries, 0 while it is unavailable.",
    ["sink"],
)


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """``histogram.observe(a)`` for each amount, with one lock round per bucket hit.

    The forwarder observes one latency per record, thousands a second; one
    ``observe`` costs a Python loop over the buckets and two locked increments.
    Here each amount's bucket is found by bisection and every bucket and the sum
    are incremented once: the same counts and sum as observing one by one.
    Amounts that carry an exemplar must go through ``observe``.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:  # not a plain (child) histogram
        for amount in amounts:
            histogram.observe(amount)
        return
    hits: dict[int, int] = {}
    added = 0.0
    find = bisect.bisect_left
    observed = False
    for amount in amounts:
        observed = True
        added += amount
        if amount != amount:  # NaN: observe adds it to the sum but to no bucket
            continue
        index = find(bounds, amount)  # the first bound >= amount: observe's bucket
        hits[index] = hits.get(index, 0) + 1
    if observed:
        add_bucket_counts(histogram, hits, added)


def add_bucket_counts(histogram: Histogram, hits: dict[int, int], added: float) -> None:
    """Add observations counted per bucket (``hits``: bucket index -> how many, by the
    histogram's upper bounds) and their sum ``added`` to a plain (child) histogram."""
    buckets = histogram._buckets
    histogram._sum.inc(added)
    for index, count in hits.items():
        buckets[index].inc(count)


class _Device:
    """Plain counts of one device label, added to its series at collection.

    A series is created by the first flush with something to add to it, as
    ``labels()`` would on first use: a device that only ever sent repeats has
    no records series, and one without repeats no duplicates series.
    """

    __slots__ = ("duplicates", "flushed", "flushed_dups", "labels", "records", "seen")

    def __init__(self, tenant: str, device_id: str) -> None:
        self.labels = (tenant, device_id)
        self.records = self.flushed = self.duplicates = self.flushed_dups = 0
        self.seen = 0.0

    def flush(self) -> None:
        records, duplicates = self.records, self.duplicates
        if records != self.flushed:
            DEVICE_RECORDS.labels(*self.labels).inc(records - self.flushed)
            DEVICE_LAST_SEEN.labels(*self.labels).set(self.seen)
            self.flushed = records
        if duplicates != self.flushed_dups:
            DEVICE_DUPLICATES.labels(*self.labels).inc(duplicates - self.flushed_dups)
            self.flushed_dups = duplicates


class DeviceMetrics:
    """Per-device counters with a bound on the number of device label values.

    Records, duplicates and last-seen time are plain numbers per device, added
    to their series when the registry is collected; sequence gaps and
    reconnects (rare) go to their counters at once. Readings are counted one
    at a time (:meth:`observe`) or, as a spool writer process counted them, in
    per-device deltas (:meth:`merge`).
    """

    def __init__(self, max_devices: int = 1000) -> None:
        self.max_devices = max_devices
        self._devices: dict[tuple[str, str], _Device] = {}
        self._others: dict[str, _Device] = {}  # per tenant: devices over the limit
        self._overflow = Tally(DEVICE_LABEL_OVERFLOW)
        self._baselines = Baselines()  # of tracked devices only: bounded by max_devices
        _FLUSH.hooks.append(self.flush)

    def flush(self) -> None:
        """Add every device's counts since the last flush to its series."""
        # list() copies in one step under the GIL: the loop may add devices meanwhile.
        for device in [*self._devices.values(), *self._others.values()]:
            device.flush()

    def _device(self, key: tuple[str, str], readings: int) -> tuple[_Device, bool]:
        """The counts of a device, and whether it has series of its own: the first
        ``max_devices`` do; the ``readings`` of any later one count under "_other"."""
        device = self._devices.get(key)
        if device is not None:
            return device, True
        if len(self._devices) < self.max_devices:
            device = self._devices[key] = _Device(*key)
            return device, True
        self._overflow.count += readings
        tenant = key[0]
        device = self._others.get(tenant)
        if device is None:
            device = self._others[tenant] = _Device(tenant, OTHER_DEVICES)
        return device, False

    def observe(
        self,
        tenant: str,
        device_id: str,
        seq: int | None,
        *,
        duplicate: bool,
        reconnects: float | None = None,
        now: float | None = None,
    ) -> None:
        """Count one committed reading of a device (after its spool commit) at ``now``."""
        key = (tenant, device_id)
        device, tracked = self._device(key, 1)
        if not count_reading(device, duplicate, now) or not tracked:
            return
        if seq is not None:
            gap = self._baselines.gap(key, seq)
            if gap:
                DEVICE_SEQ_GAPS.labels(tenant, device_id).inc(gap)
        if reconnects is not None:
            new = self._baselines.reconnected(key, reconnects)
            if new:
                DEVICE_RECONNECTS.labels(tenant, device_id).inc(new)

    def merge(self, deltas: Iterable[DeviceDelta]) -> None:
        """Count readings counted elsewhere (a spool writer process's DeviceCounts): the
        same series as :meth:`observe` of each reading would give."""
        for delta in deltas:
            device, tracked = self._device(
                (delta.tenant, delta.device_id), delta.records + delta.duplicates
            )
            device.duplicates += delta.duplicates
            if not delta.records:
                continue
            device.records += delta.records
            device.seen = max(device.seen, delta.seen)
            if not tracked:
                continue
            if delta.gaps:
                DEVICE_SEQ_GAPS.labels(delta.tenant, delta.device_id).inc(delta.gaps)
            if delta.reconnects:
                DEVICE_RECONNECTS.labels(delta.tenant, delta.device_id).inc(delta.reconnects)


DEVICES = DeviceMetrics()
