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


def _uuid7_int() -> int:
    """A new UUIDv7 as its 128-bit integer.

    The 48-bit millisecond timestamp leads; within one millisecond a 12-bit
    counter (``rand_a``) keeps ids of one process strictly increasing, the rest
    is random.
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
        counter = _counter
    rand_b = _random.getrandbits(62)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= rand_b
    return value


def uuid7() -> uuid.UUID:
    """Return a new UUIDv7 (see :func:`_uuid7_int`)."""
    return uuid.UUID(int=_uuid7_int())


def uuid7_str() -> str:
    """Return a new UUIDv7 in its canonical text form (8-4-4-4-12 lower-case hex).

    Formatted straight from the integer: building a ``uuid.UUID`` first costs
    more than the id itself on the ingest hot path.
    """
    h = f"{_uuid7_int():032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
