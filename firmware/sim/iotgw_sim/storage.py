"""What a simulated device keeps: its seq in "flash" (a file), its ring in "RAM".

The seq store follows the firmware's seqstore.c: it persists a *ceiling*.
Before it hands out the first seq at or above the stored ceiling it writes a
new ceiling ``seq + lease``; after a reboot it resumes at the stored ceiling.
So a seq never goes back, and a reboot leaves a gap of less than the lease.
The ring follows ring.c: fixed slots, drop-oldest, counted. It is lost on a
reboot, as RAM is.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path


class SeqStore:
    """A monotonic per-device counter persisted to a file (write, fsync, rename)."""

    def __init__(self, path: Path, lease: int = 16) -> None:
        if lease < 1:
            raise ValueError("lease must be >= 1")
        self.path = path
        self.lease = lease
        self.writes = 0
        self.ceiling = self._read()
        self.next_seq = self.ceiling  # a boot resumes at the ceiling

    def _read(self) -> int:
        try:
            data = json.loads(self.path.read_text())
            return int(data["ceiling"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError) as exc:
            # A torn write cannot happen (rename is atomic); anything else is a broken file.
            raise ValueError(f"unreadable seq store {self.path}: {exc}") from None

    def _persist(self, ceiling: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps({"ceiling": ceiling}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.ceiling = ceiling
        self.writes += 1

    def take(self) -> int:
        """The next seq; persists a new ceiling first when the lease is used up."""
        seq = self.next_seq
        if seq >= self.ceiling:
            self._persist(seq + self.lease)
        self.next_seq = seq + 1
        return seq


@dataclass(frozen=True)
class Reading:
    """One message waiting in the ring: its seq, class and the exact body to publish."""

    seq: int
    cls: str
    body: bytes
    queued_at: float


class Ring:
    """Store-and-forward buffer: fixed slots, drop-oldest when full, drops counted."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.slots = slots
        self._items: deque[Reading] = deque()
        self.dropped = 0

    def push(self, item: Reading) -> Reading | None:
        """Add ``item``; returns the evicted oldest reading when the ring was full."""
        evicted = None
        if len(self._items) >= self.slots:
            evicted = self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        return evicted

    def head(self) -> Reading | None:
        """The oldest reading (the next to send), or None."""
        return self._items[0] if self._items else None

    def pop_head(self, seq: int) -> None:
        """Remove the head after its PUBACK (if it is still the one with ``seq``)."""
        if self._items and self._items[0].seq == seq:
            self._items.popleft()

    def clear(self) -> list[Reading]:
        """Empty the ring (a reboot); returns what was lost."""
        lost = list(self._items)
        self._items.clear()
        return lost

    def __len__(self) -> int:
        return len(self._items)
