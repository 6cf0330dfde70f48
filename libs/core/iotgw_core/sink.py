"""Sinks: where the forwarder delivers records. One small protocol, several backends.

A sink receives records in per-device order and answers with one
:class:`Delivery` per record. ``RETRY`` (a transient failure of that record)
spends one of the record's attempts; ``REJECT`` (retrying cannot cure it)
makes it Dead at once; ``SKIPPED`` marks records of a device that the sink did
not try because an earlier record of the same device failed, which is how
per-device order survives a failure. :class:`SinkUnavailable` says the sink as
a whole cannot take records now (disk full, uplink down): nothing is spent,
the forwarder waits and tries again.
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .spool import StoredRecord


class Outcome(enum.Enum):
    """What happened to one record handed to a sink."""

    DELIVERED = "delivered"
    RETRY = "retry"
    REJECT = "reject"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Delivery:
    """The sink's answer for one record; ``error`` says why it was not delivered."""

    outcome: Outcome
    error: str | None = None


DELIVERED = Delivery(Outcome.DELIVERED)
SKIPPED = Delivery(Outcome.SKIPPED)


class SinkUnavailable(Exception):
    """The sink cannot take any record now; nothing was delivered."""


@runtime_checkable
class Sink(Protocol):
    """The contract every sink keeps (file, MQTT, AWS IoT, ...)."""

    name: str

    async def start(self) -> None:
        """Open connections or files."""

    async def deliver(self, records: Sequence[StoredRecord]) -> list[Delivery]:
        """Deliver ``records`` (per-device order); one Delivery per record, in order.

        Returns only once every DELIVERED record is acknowledged by the sink
        (flushed to disk, PUBACK, HTTP 200). Raises SinkUnavailable if none
        could be delivered because the sink is unreachable.
        """

    async def close(self) -> None:
        """Flush and release resources."""

    def status(self) -> dict[str, Any]:
        """A JSON-able summary for /healthz."""


def skip_after_failure(records: Sequence[StoredRecord], answers: list[Delivery]) -> list[Delivery]:
    """Turn answers for records after a device's first failure into SKIPPED."""
    if len(records) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(records)} records")
    first = next(
        (i for i, a in enumerate(answers) if a.outcome in (Outcome.RETRY, Outcome.SKIPPED)), None
    )
    if first is None:  # no failure: nothing to skip (the usual case)
        return list(answers)
    failed: set[tuple[str, str]] = set()
    out = list(answers[:first])
    for rec, answer in zip(records[first:], answers[first:], strict=True):
        if rec.device_key in failed:
            out.append(SKIPPED)
            continue
        if answer.outcome in (Outcome.RETRY, Outcome.SKIPPED):
            failed.add(rec.device_key)
        out.append(answer)
    return out


class FileSink:
    """JSON Lines under a directory, rotated by size, fsynced before anything is acked."""

    name = "file"

    def __init__(
        self,
        directory: str | Path,
        *,
        max_file_bytes: int = 64 << 20,
        max_record_bytes: int = 128 * 1024,
    ) -> None:
        self.directory = Path(directory)
        self.max_file_bytes = max_file_bytes
        self.max_record_bytes = max_record_bytes
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._last_ok: float | None = None
        self._last_error: str | None = None
        self._written = 0

    async def start(self) -> None:
        """Create the directory and mend a torn last line left by a crash.

        A directory that cannot be used yet is not fatal: deliveries answer
        SinkUnavailable until it can.
        """
        try:
            await asyncio.to_thread(self._open_latest)
        except OSError as exc:
            self._last_error = f"{exc.strerror or exc} ({self.directory})"

    def _open_latest(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        files = sorted(self.directory.glob("outbox-*.jsonl"))
        if files:
            self._repair_tail(files[-1])
            self._open(files[-1])
        else:
            self._rotate()

    @staticmethod
    def _repair_tail(path: Path) -> None:
        # A crash in the middle of a write can leave half a line; those records
        # were never acked, so they will be written again whole.
        with path.open("rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            pos = size
            while pos > 0:
                step = min(65536, pos)
                fh.seek(pos - step)
                chunk = fh.read(step)
                idx = chunk.rfind(b"\n")
                if idx >= 0:
                    pos = pos - step + idx + 1
                    break
                pos -= step
            fh.truncate(pos)
            fh.flush()
            os.fsync(fh.fileno())

    def _open(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._path = path
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        n = 0
        while (path := self.directory / f"outbox-{stamp}-{n:04d}.jsonl").exists():
            n += 1
        self._open(path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's name is durable too
        finally:
            os.close(dir_fd)

    async def deliver(self, records: Sequence[StoredRecord]) -> list[Delivery]:
        """Append each record as one line, fsync, then report them delivered."""
        answers: list[Delivery] = []
        lines: list[bytes] = []
        for rec in records:
            if len(rec.body) > self.max_record_bytes:
                answers.append(
                    Delivery(
                        Outcome.REJECT,
                        f"record_too_large: {len(rec.body)} bytes over the sink limit"
                        f" of {self.max_record_bytes}",
                    )
                )
            else:
                answers.append(DELIVERED)
                lines.append(rec.body + b"\n")
        if lines:
            try:
                await asyncio.to_thread(self._write, lines)
            except OSError as exc:
                self._last_error = f"{exc.strerror or exc} ({self.directory})"
                raise SinkUnavailable(f"file sink cannot write: {self._last_error}") from exc
            self._last_ok = time.time()
            self._last_error = None
            self._written += len(lines)
        return answers

    def _write(self, lines: list[bytes]) -> None:
        if self._fd is None or not self.directory.is_dir() or self._size >= self.max_file_bytes:
            self._rotate()
        assert self._fd is not None
        data = b"".join(lines)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self._size += len(data)

    async def close(self) -> None:
        """Close the current file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def status(self) -> dict[str, Any]:
        """Directory, current file, last success and last error."""
        return {
            "sink": self.name,
            "status": "ok" if self._last_error is None else "failing",
            "file": str(self._path) if self._path else None,
            "written": self._written,
            "last_ok": self._last_ok,
            "last_error": self._last_error,
        }


@dataclass
class MemorySink:
    """The in-memory twin of a sink, for tests and demos; can be told to fail.

    ``unavailable_for`` calls raise SinkUnavailable; ``retry_for`` calls answer
    RETRY for every record; records whose id is in ``poison`` always get RETRY;
    bodies over ``max_record_bytes`` are rejected.
    """

    name: str = "memory"
    max_record_bytes: int = 128 * 1024
    delivered: list[StoredRecord] = field(default_factory=list)
    poison: set[str] = field(default_factory=set)
    unavailable_for: int = 0
    retry_for: int = 0
    calls: int = 0

    async def start(self) -> None:
        """Nothing to open."""

    async def deliver(self, records: Sequence[StoredRecord]) -> list[Delivery]:
        """Keep each record in ``delivered`` unless told to fail."""
        self.calls += 1
        if self.unavailable_for > 0:
            self.unavailable_for -= 1
            raise SinkUnavailable("memory sink told to be unavailable")
        if self.retry_for > 0:
            self.retry_for -= 1
            return [Delivery(Outcome.RETRY, "memory sink told to fail")] * len(records)
        answers = []
        for rec in records:
            if rec.id in self.poison:
                answers.append(Delivery(Outcome.RETRY, "poison record: sink refuses it"))
            elif len(rec.body) > self.max_record_bytes:
                answers.append(Delivery(Outcome.REJECT, "record_too_large"))
            else:
                answers.append(DELIVERED)
        answers = skip_after_failure(records, answers)
        self.delivered.extend(
            rec for rec, a in zip(records, answers, strict=True) if a.outcome is Outcome.DELIVERED
        )
        return answers

    async def close(self) -> None:
        """Nothing to close."""

    def status(self) -> dict[str, Any]:
        """Counts of calls and deliveries."""
        return {"sink": self.name, "status": "ok", "delivered": len(self.delivered)}
