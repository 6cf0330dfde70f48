"""Per-reading counts as plain numbers, without Prometheus.

What a committed reading adds to its device's series (records, repeats, last
seen, seq gaps, reconnects) and which latency bucket an observation falls in.
The spool writer process (iotgw_core.spool_process) keeps these for the
readings it seals and sends them to its service now and then, where
iotgw_core.metrics adds them to the Prometheus metrics in bulk: the per-reading
work then runs beside the commit, not on the event loop. This module imports
no Prometheus, so the writer process registers no metrics of its own.
"""

from __future__ import annotations

import bisect
import math
import time
from typing import Protocol, TypeVar

import msgspec

from .spool import NewRecord

_Value = TypeVar("_Value", int, float)

# Upper bounds of the latency histograms (seconds); +Inf is the last bucket.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LATENCY_BOUNDS = (*LATENCY_BUCKETS, math.inf)


class Baselines:
    """The last seq and the last ``reconnects`` value of each device: what a seq gap
    and new reconnects are counted against.

    At most ``limit`` devices are remembered (the oldest forgotten first; a device
    forgotten starts over, as after a restart); None: no limit.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._seq: dict[tuple[str, str], int] = {}
        self._reconnects: dict[tuple[str, str], float] = {}

    def gap(self, key: tuple[str, str], seq: int) -> int:
        """How many seqs the device skipped before ``seq`` (0 for the next one, a late
        reading, or the first one seen); ``seq`` becomes its baseline when it is newer."""
        last = self._seq.get(key)
        # A smaller seq is a late reading or a device restart: no gap, new baseline.
        if last is None or seq > last or seq < last - 1000:
            self._remember(self._seq, key, seq)
        if last is not None and seq > last + 1:
            return seq - last - 1
        return 0

    def reconnected(self, key: tuple[str, str], reconnects: float) -> float:
        """Reconnects since the device's last reported count (a smaller count is a
        counter reset: all of it is new); 0 for the first report."""
        before = self._reconnects.get(key)
        self._remember(self._reconnects, key, reconnects)
        if before is None or reconnects == before:
            return 0.0
        return reconnects - before if reconnects > before else reconnects

    def _remember(
        self, values: dict[tuple[str, str], _Value], key: tuple[str, str], value: _Value
    ) -> None:
        if self.limit is not None and key not in values and len(values) >= self.limit:
            del values[next(iter(values))]
        values[key] = value


class Counted(Protocol):
    """Counts of one device's readings."""

    records: int
    duplicates: int
    seen: float


def count_reading(counted: Counted, duplicate: bool, now: float | None) -> bool:
    """Count one committed reading (at ``now``; None: the current time); True if it
    was stored, False for a repeat."""
    if duplicate:
        counted.duplicates += 1
        return False
    counted.records += 1
    counted.seen = time.time() if now is None else now
    return True


class DeviceDelta(msgspec.Struct, array_like=True, gc=False):
    """What one device's readings added since the last report."""

    tenant: str
    device_id: str
    records: int = 0  # stored, duplicates excluded
    duplicates: int = 0
    seen: float = 0.0  # Unix time of the last stored reading (0: none)
    gaps: int = 0
    reconnects: float = 0.0


class DeviceCounts:
    """Per-device deltas since the last :meth:`take`, for one owner thread."""

    def __init__(self, baselines: int = 10_000) -> None:
        self.baselines = Baselines(baselines)
        self._pending: dict[tuple[str, str], DeviceDelta] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def observe(
        self, record: NewRecord, duplicate: bool, reconnects: float | None, now: float
    ) -> None:
        """Count one committed reading (a repeat if ``duplicate``) at ``now``."""
        key = (record.tenant, record.device_id)
        delta = self._pending.get(key)
        if delta is None:
            delta = self._pending[key] = DeviceDelta(*key)
        if not count_reading(delta, duplicate, now):
            return
        if record.seq is not None:
            delta.gaps += self.baselines.gap(key, record.seq)
        if reconnects is not None:
            delta.reconnects += self.baselines.reconnected(key, reconnects)

    def take(self) -> list[DeviceDelta]:
        """The deltas since the last call, one per device; counting starts over."""
        pending, self._pending = self._pending, {}
        return list(pending.values())


class BucketCounts:
    """Observations of a latency histogram (LATENCY_BUCKETS) as counts per bucket."""

    def __init__(self) -> None:
        self.hits: dict[int, int] = {}  # bucket index -> observations
        self.total = 0.0  # their sum

    def __bool__(self) -> bool:
        return bool(self.hits)

    def add(self, amount: float) -> None:
        """Observe ``amount`` (finite amounts only)."""
        index = bisect.bisect_left(_LATENCY_BOUNDS, amount)  # the first bound >= amount
        self.hits[index] = self.hits.get(index, 0) + 1
        self.total += amount

    def take(self) -> tuple[dict[int, int], float]:
        """The counts and sum since the last call; counting starts over."""
        hits, total = self.hits, self.total
        self.hits, self.total = {}, 0.0
        return hits, total
