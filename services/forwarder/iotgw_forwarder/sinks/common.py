"""What the cloud sinks share: topics, size limits, pacing and error reasons.

AWS IoT Core's broker limits (docs/sinks.md): a payload of at most 128 KB, a
topic of at most 7 slashes (not counting a Basic Ingest ``$aws/rules/<rule>/``
prefix) and 256 bytes, about 100 publishes per second and 100 unacknowledged
QoS 1 publishes per connection. A record that breaks a limit can never be
delivered, so it is rejected (Dead at once) with a reason that starts with a
stable code: ``payload_too_large``, ``invalid_topic``, ``not_authorized``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from iotgw_core.spool import StoredRecord

MAX_TOPIC_SLASHES = 7
MAX_TOPIC_BYTES = 256
# Bytes of a PUBLISH packet besides payload and topic (fixed header, length
# fields, packet id, MQTT v5 properties): keeps a publish under the broker's
# max_packet_size, which counts the whole packet.
PUBLISH_OVERHEAD = 64


class _Meta(msgspec.Struct):
    """The envelope fields a topic is made from (the rest is not decoded)."""

    tenant: str
    site: str
    device_id: str
    record_class: str = msgspec.field(name="class", default="telemetry")


_meta_decoder = msgspec.json.Decoder(_Meta)


class PermanentError(Exception):
    """A record no retry can deliver; ``reason`` starts with a stable code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    """Renders ``dt/{tenant}/{site}/{device_id}/{class}`` and checks AWS IoT's topic rules."""

    template: str = "dt/{tenant}/{site}/{device_id}/{class}"
    basic_ingest_rule: str = ""

    def render(self, record: StoredRecord) -> str:
        """The topic of ``record``; raises PermanentError when it breaks a rule."""
        try:
            meta = _meta_decoder.decode(record.body)
        except msgspec.DecodeError as exc:
            raise PermanentError(f"invalid_envelope: {exc}") from None
        topic = self.template.format_map(
            {
                "tenant": meta.tenant,
                "site": meta.site,
                "device_id": meta.device_id,
                "class": meta.record_class,
            }
        )
        check_topic(topic)
        if self.basic_ingest_rule:
            # Basic Ingest: straight to a rule, no broker fan-out; the prefix
            # does not count against the topic limits.
            return f"$aws/rules/{self.basic_ingest_rule}/{topic}"
        return topic

    def validate(self) -> None:
        """Raise ValueError when the template itself cannot make a valid topic."""
        try:
            sample = self.template.format_map(
                {"tenant": "t", "site": "s", "device_id": "d", "class": "telemetry"}
            )
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"topic template {self.template!r}: {exc}") from None
        try:
            check_topic(sample)
        except PermanentError as exc:
            raise ValueError(f"topic template {self.template!r}: {exc.reason}") from None


def check_topic(topic: str) -> None:
    """Raise PermanentError unless ``topic`` is a valid AWS IoT publish topic."""
    if not topic or topic.startswith("$"):
        raise PermanentError(f"invalid_topic: {topic!r} is empty or reserved")
    if any(ch in topic for ch in "+#\x00"):
        raise PermanentError(f"invalid_topic: {topic!r} holds a wildcard or NUL")
    if topic.count("/") > MAX_TOPIC_SLASHES:
        raise PermanentError(
            f"invalid_topic: {topic!r} has {topic.count('/')} slashes, over the limit of"
            f" {MAX_TOPIC_SLASHES}"
        )
    size = len(topic.encode())
    if size > MAX_TOPIC_BYTES:
        raise PermanentError(f"invalid_topic: {size} bytes, over the limit of {MAX_TOPIC_BYTES}")


def check_size(payload_bytes: int, topic: str, limit: int) -> None:
    """Raise PermanentError when a publish of this payload would be over ``limit`` bytes."""
    size = payload_bytes + len(topic.encode()) + PUBLISH_OVERHEAD
    if size > limit:
        raise PermanentError(
            f"payload_too_large: a publish of {payload_bytes} payload bytes is over the"
            f" sink limit of {limit} bytes"
        )


class TokenBucket:
    """At most ``rate`` takes per second on average, ``burst`` at once.

    With ``rate + burst <= 100`` no window of one second sees more than 100
    publishes, which is AWS IoT Core's per-connection limit.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self, count: int = 1) -> None:
        """Wait until ``count`` tokens are there, then take them (FIFO among waiters)."""
        if self.rate <= 0:
            return
        async with self._lock:
            self._refill()
            while self.tokens < count:
                await asyncio.sleep((count - self.tokens) / self.rate)
                self._refill()
            self.tokens -= count


class RateMeter:
    """Publishes over the last few seconds, for the publishes/s gauge and status."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self.stamps: list[float] = []
        self.peak_per_s = 0

    def add(self) -> None:
        """Count one publish now."""
        now = time.monotonic()
        self.stamps.append(now)
        if len(self.stamps) > 4096 or self.stamps[0] < now - self.window_s:
            self.stamps = [t for t in self.stamps if t >= now - self.window_s]
        last_second = len(self.stamps) - _bisect_left(self.stamps, now - 1.0)
        self.peak_per_s = max(self.peak_per_s, last_second)

    def per_second(self) -> float:
        """Average publishes per second over the window."""
        now = time.monotonic()
        recent = [t for t in self.stamps if t >= now - self.window_s]
        return len(recent) / self.window_s


def _bisect_left(items: Sequence[float], value: float) -> int:
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if items[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def batch_payload(bodies: Sequence[bytes]) -> bytes:
    """Several envelopes of one device in one publish: a JSON array, in record order."""
    if len(bodies) == 1:
        return bodies[0]
    return b"[" + b",".join(bodies) + b"]"


class RecordBudget:
    """A non-blocking token bucket: how many backlog records may go now (``rate`` per s)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)  # at most one second's worth at once
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def available(self) -> int:
        """Whole records that may be handed over now."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return int(self.tokens)

    def spend(self, count: int) -> None:
        """Take ``count`` records out of the budget."""
        self.tokens -= count
