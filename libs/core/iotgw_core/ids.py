"""Record identifiers: UUIDv7 (RFC 9562), time-ordered so that ids sort like arrival."""

from __future__ import annotations

import random
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0
# Ids must be unique, not secret: a PRNG seeded from the OS is enough and 10x cheaper.
_random = random.Random()


def _tick() -> tuple[int, int]:
    """The 48-bit millisecond timestamp and the 12-bit counter of a new id.

    Within one millisecond the counter (``rand_a``) keeps the ids of one process
    strictly increasing; once it is exhausted the next millisecond is borrowed.
    """
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _counter = 0
        return ms & 0xFFFF_FFFF_FFFF, _counter


def _uuid7_int() -> int:
    """A new UUIDv7 as its 128-bit integer: timestamp, version, counter, variant, 62 random bits."""
    ms, counter = _tick()
    return (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | _random.getrandbits(62)


def uuid7() -> uuid.UUID:
    """Return a new UUIDv7 (see :func:`_uuid7_int`)."""
    return uuid.UUID(int=_uuid7_int())


_prefix: tuple[int, str] = (-1, "")  # (millisecond, its text): replaced as one object


def uuid7_str() -> str:
    """Return a new UUIDv7 in its canonical text form (8-4-4-4-12 lower-case hex).

    The millisecond's part (``xxxxxxxx-xxxx-7``) is formatted once per
    millisecond and the rest in one operation: building a ``uuid.UUID``, or
    one 128-bit integer and slicing its hex, costs more than the id itself on
    the ingest hot path.
    """
    global _prefix
    ms, counter = _tick()
    rand = _random.getrandbits(62)
    prefix_ms, prefix = _prefix
    if ms != prefix_ms:
        prefix = "%08x-%04x-7" % (ms >> 16, ms & 0xFFFF)  # noqa: UP031
        _prefix = (ms, prefix)
    # %-formatting: half the time of the same f-string with format specs here.
    return prefix + "%03x-%04x-%012x" % (  # noqa: UP031
        counter,
        0x8000 | (rand >> 48),
        rand & 0xFFFF_FFFF_FFFF,
    )
