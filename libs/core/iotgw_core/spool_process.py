"""Group commit in a process of its own: :class:`ProcessSpoolWriter`.

Same contract as :class:`~iotgw_core.spool.SpoolWriter` (``append_many``
resolves only after the transaction holding the records committed with
``synchronous=FULL``; ``on_commit`` runs on the event loop after each commit,
in commit order), but the SQLite work runs in a child process
(``python -m iotgw_core.spool_process``) instead of a thread.

Why: on a thread, each SQLite call of a commit gives the GIL away and must
take it back from a busy event loop; measured under 64 HTTP connections, a
commit of ~30 records held the write lock ~6 ms of which fsync and SQLite
were well under 1 ms, the rest waiting for the GIL, and the event loop paid
for the switching too (docs/performance.md). A child process has its own
interpreter: the commit runs at SQLite's speed, and the event loop's share
is one socket write per loop iteration and one read per commit.

The child can also do the ingest's own work on a reading before storing it
(:meth:`ProcessSpoolWriter.append_readings`): the HTTP ingest hands over the
request body as it came, and the child validates it, gives it an id and
builds its envelope. That work then runs on the other core, beside the
commit, instead of on the event loop that every request waits for.

Protocol over a socket pair, frames of a 4-byte big-endian length and a
msgpack body:

- parent -> child: one frame per ``append_many`` call (its records) or per
  ``append_readings`` call (its raw readings).
- child -> parent: one frame per transaction: how many request frames it
  covered, the results of the records it stored in order, what became of
  each raw reading (stored, or the rule it broke), and the spool totals after
  it; or the error that rolled it back (those appends fail with SpoolError).
  At most every COUNTS_INTERVAL_S a reply also carries what the child counted
  of the readings it sealed (per device, commit latencies: :class:`Counts`);
  once idle that long, the child sends them in a reply that covers no frame.

The child commits every request frame it has (up to ``max_batch`` records)
in one transaction, as the thread does. It exits when the parent closes its
end (a parent killed with ``-9`` included): nothing is acknowledged that the
parent did not receive the reply for. If the child dies, every append waiting
on it fails with SpoolError (not acknowledged, so nothing acknowledged is
lost: a sender retries and idempotency by ``seq`` keeps one record) and the
next append starts a new child.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from redis.exceptions import RedisError

from .counts import BucketCounts, DeviceCounts, DeviceDelta
from .envelope import GatewayInfo, RecordClass, Source, encode_envelope, envelope_of
from .ids import uuid7_str
from .process import to_worker_cpus
from .spool import AppendResult, CommitHook, NewRecord, Spool, SpoolError, Totals
from .stream import StreamEntry, add_many_blocking, connect_blocking
from .validation import ValidationFailure, parse_reading, timestamp_ms

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
_RESTART_MIN_INTERVAL_S = 0.5
_HANDOFF_ENV = "IOTGW_WRITER_HANDOFF"  # the child's hand-off target (its URL may hold a password)
_HANDOFF_MAX_ENTRIES = 5000  # records a hand-off gathers into one XADD pipeline at most
# How often the child reports what it counted of the readings it sealed (per-device
# counts, commit latencies): with a reply, or on its own once idle.
COUNTS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class HandoffTarget:
    """Where the child hands each commit's records over (the record stream)."""

    redis_url: str
    stream_key: str
    linger_s: float
    stop_timeout_s: float = 5.0


class RawReading(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A reading as its request brought it, for the child to validate and seal."""

    device_id: str
    tenant: str
    site: str
    traceparent: str | None  # already checked against the W3C format, or None
    received_ms: int  # arrival, milliseconds since the epoch
    body: bytes
    record_class: RecordClass = "telemetry"


class ReadingOutcome(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What became of a RawReading: the rule it broke (``code`` and ``message``), or
    None and "" for one that was stored."""

    code: str | None = None
    message: str = ""


Answer = tuple[ReadingOutcome, AppendResult | None]  # result None: not stored


class _Records(msgspec.Struct, array_like=True, tag=0):
    records: Sequence[NewRecord]


class _Readings(msgspec.Struct, array_like=True, tag=1):
    readings: Sequence[RawReading]
    sent: float  # time.monotonic() of the parent when it sent them (the same clock here)


class Counts(msgspec.Struct, array_like=True):
    """What the child counted of the readings it sealed since its last report: per
    device (DeviceMetrics.merge) and the commit latency of each request frame of
    readings, from the parent's send to the commit, per bucket (LATENCY_BUCKETS)."""

    devices: list[DeviceDelta]
    commit_hits: dict[int, int]
    commit_sum: float


class _Reply(msgspec.Struct, array_like=True):
    frames: int
    results: list[AppendResult]
    records: int
    bytes: int
    error: str | None = None
    outcomes: list[ReadingOutcome] = []
    # Hand-offs that failed since the last reply: how many records, the last error.
    handoff_failed: int = 0
    handoff_error: str | None = None
    counts: Counts | None = None  # at most every COUNTS_INTERVAL_S


_encode = msgspec.msgpack.Encoder().encode
_decode_request = msgspec.msgpack.Decoder(_Records | _Readings).decode
_decode_reply = msgspec.msgpack.Decoder(_Reply).decode


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


def _split_frames(buf: bytearray, limit: int | None = None) -> list[bytes]:
    """Complete frames at the front of ``buf`` (removed from it), at most ``limit``."""
    frames: list[bytes] = []
    pos, size = 0, len(buf)
    while size - pos >= 4 and (limit is None or len(frames) < limit):
        (n,) = _HEADER.unpack_from(buf, pos)
        if size - pos - 4 < n:
            break
        frames.append(bytes(buf[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    del buf[:pos]
    return frames


class ProcessSpoolWriter:
    """Group commit in a child process; the interface of SpoolWriter."""

    def __init__(
        self,
        spool: Spool,
        *,
        max_batch: int = 1024,
        on_commit: CommitHook | None = None,
        gateway_id: str = "gateway",
        source: Source = "http",
        on_handoff_failure: Callable[[int, str], None] | None = None,
        on_counts: Callable[[Counts], None] | None = None,
    ):
        self.spool = spool
        self.max_batch = max_batch
        self.on_commit = on_commit
        # Set before start(): the child then hands every commit's records to the stream.
        self.handoff: HandoffTarget | None = None
        self.on_handoff_failure = on_handoff_failure
        self.on_counts = on_counts  # on the event loop, for what the child counted
        # What the envelopes of append_readings carry.
        self.gateway_id = gateway_id
        self.source: Source = source
        self.last_batch_size = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._out = bytearray()
        self._flush_scheduled = False
        self._writing = False
        self._in = bytearray()
        # Sent, waiting for their commit, in the order the child sees them: the
        # records or raw readings of each frame, and the future of its append.
        self._pending: deque[
            tuple[Sequence[NewRecord] | Sequence[RawReading], bool, asyncio.Future[Any]]
        ] = deque()
        self._gone_at = 0.0  # when the last child was found dead
        self._stopping = False
        self._drained: asyncio.Event | None = None
        self._checkpointer: threading.Event | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start the child process (and the WAL checkpointer), bound to the running loop."""
        self._loop = asyncio.get_running_loop()
        self._checkpointer = self.spool.checkpoint_in_background()
        self._spawn()

    def _spawn(self) -> None:
        assert self._loop is not None
        parent, child = socket.socketpair()
        argv = [
            sys.executable,
            "-m",
            "iotgw_core.spool_process",
            str(self.spool.path),
            self.spool.synchronous,
            str(self.spool.busy_timeout_ms),
            str(self.max_batch),
            str(child.fileno()),
            self.gateway_id,
            self.source,
        ]
        env = dict(os.environ)
        if self.handoff is not None:
            env[_HANDOFF_ENV] = json.dumps(vars(self.handoff))
        try:
            self._proc = subprocess.Popen(
                argv, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env
            )
        finally:
            child.close()
        parent.setblocking(False)
        self._sock = parent
        self._in.clear()
        self._out.clear()
        self._writing = False
        self._loop.add_reader(parent.fileno(), self._on_readable)
        log.debug("spool writer process %d started", self._proc.pid)

    async def append(self, record: NewRecord) -> AppendResult:
        """Append one record; returns after its transaction committed."""
        return (await self.append_many((record,)))[0]

    async def append_many(self, records: Sequence[NewRecord]) -> list[AppendResult]:
        """Append records in one transaction; returns after it committed."""
        result: list[AppendResult] = await self._send(records, False, _Records(records))
        return result

    def append_readings(self, readings: Sequence[RawReading]) -> asyncio.Future[list[Answer]]:
        """Validate raw readings, seal the valid ones in envelopes (ids, arrival time,
        ``gateway_id``, ``source``) and append them in one transaction.

        The future gives, per reading, its outcome and, if it was stored, its result
        (after the commit); a reading that breaks a rule gets its code and message
        instead. A future, not a coroutine: on the HTTP hot path every coroutine
        between the handler and the wait is created, and resumed once the commit
        is in, per request. Raises SpoolError at once if the writer cannot take them.
        """
        future: asyncio.Future[list[Answer]] = self._send(
            readings, True, _Readings(readings, time.monotonic())
        )
        return future

    def _send(
        self, items: Sequence[NewRecord] | Sequence[RawReading], raw: bool, request: Any
    ) -> asyncio.Future[Any]:
        if self._loop is None or self._stopping:
            raise SpoolError("spool writer is not started")
        if self._sock is None:
            if time.monotonic() - self._gone_at < _RESTART_MIN_INTERVAL_S:
                raise SpoolError("spool writer process is restarting")
            self._spawn()
        future: asyncio.Future[Any] = self._loop.create_future()
        idle = not self._pending  # the child has nothing to commit: it waits for this
        self._pending.append((items, raw, future))
        self._out += _frame(_encode(request))
        if self._writing:
            pass  # the writer callback sends it
        elif idle:
            # At once: the child starts its transaction while this loop iteration
            # goes on (an iteration that handles a burst of requests takes ms).
            self._flush()
        elif not self._flush_scheduled:
            # The child is busy: one send for every append of this loop iteration.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        # A sender that goes away cancels only its wait: the record is committed anyway.
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        sock = self._sock
        if sock is None or not self._out:
            return
        try:
            sent = sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._child_gone(f"spool writer process unreachable: {exc}")
            return
        del self._out[:sent]
        assert self._loop is not None
        if self._out and not self._writing:
            self._writing = True
            self._loop.add_writer(sock.fileno(), self._on_writable)
        elif not self._out and self._writing:
            self._writing = False
            self._loop.remove_writer(sock.fileno())

    def _on_writable(self) -> None:
        self._flush()

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:
            # The child died with frames it had not read yet (sent while it waited
            # on a transaction): its end closes with a reset instead of an EOF.
            data = b""
        except OSError as exc:
            self._child_gone(f"spool writer process unreachable: {exc}")
            return
        if not data:
            self._child_gone("spool writer process exited")
            return
        self._in += data
        for frame in _split_frames(self._in):
            self._complete(_decode_reply(frame))

    def _complete(self, reply: _Reply) -> None:
        batch = [self._pending.popleft() for _ in range(reply.frames)]
        if reply.handoff_failed and self.on_handoff_failure is not None:
            self.on_handoff_failure(reply.handoff_failed, reply.handoff_error or "")
        if reply.error is not None:
            exc = SpoolError(reply.error)
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        results = reply.results
        stored: list[NewRecord | RawReading] = []  # in the order of results
        answers: list[list[AppendResult] | list[Answer]] = []
        outcomes = iter(reply.outcomes)
        for items, raw, _ in batch:
            if not raw:
                answers.append(results[len(stored) : len(stored) + len(items)])
                stored.extend(items)
                continue
            answer: list[Answer] = []
            for item in items:
                outcome = next(outcomes)
                if outcome.code is None:
                    answer.append((outcome, results[len(stored)]))
                    stored.append(item)
                else:
                    answer.append((outcome, None))
            answers.append(answer)
        if stored:  # a transaction ran
            self.last_batch_size = len(stored)
            if self.on_commit is not None:
                self.on_commit(stored, results, Totals(reply.records, reply.bytes))
        for (_, _, future), answer_ in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer_)
        if self._out and not self._writing:
            self._flush()  # the child is between transactions: what gathered goes now
        if reply.counts is not None and self.on_counts is not None:
            self.on_counts(reply.counts)  # after the answers: nobody waits for these
        if not self._pending and self._drained is not None:
            self._drained.set()

    def _child_gone(self, why: str) -> None:
        """Fail what waits on the child; the next append starts a new one."""
        assert self._loop is not None
        sock, self._sock = self._sock, None
        self._gone_at = time.monotonic()
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            if self._writing:
                self._loop.remove_writer(sock.fileno())
            sock.close()
        self._writing = False
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(1.0)
        if not self._stopping:
            log.error(
                "%s (exit code %s); waiting appends fail, the next one restarts it", why, code
            )
        exc = SpoolError(why)
        while self._pending:
            _, _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(exc)
        if self._drained is not None:
            self._drained.set()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Commit what was sent, then let the child exit."""
        if self._loop is None or self._stopping:
            return
        self._stopping = True
        if self._sock is not None:
            self._flush()
            if self._pending:
                self._drained = asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drained.wait(), timeout_s)
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_WR)  # EOF: the child exits
        proc = self._proc
        if proc is not None:
            try:
                await asyncio.to_thread(proc.wait, timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self._sock is not None:
            self._child_gone("spool writer stopped")
        if self._checkpointer is not None:
            self._checkpointer.set()


# -- the child process ------------------------------------------------------------------------


def _read_frames(
    sock: socket.socket, buf: bytearray, max_records: int, wait_s: float | None = None
) -> list[_Records | _Readings] | None:
    """The request frames available (waiting for the first, at most ``wait_s`` if
    given: none is an empty list), up to ``max_records`` records and readings.

    None once the parent has closed its end and nothing is left.
    """
    frames: list[_Records | _Readings] = []
    items = 0
    while items < max_records:
        complete = _split_frames(buf, limit=1)
        if complete:
            frame = _decode_request(complete[0])
            frames.append(frame)
            items += len(frame.records if isinstance(frame, _Records) else frame.readings)
            continue
        if frames:  # take more only if it is there already
            try:
                data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
        else:
            if wait_s is not None and not _readable(sock, wait_s):
                return frames  # none came in time
            data = sock.recv(1 << 20)
            if not data:
                return None
        buf += data
    return frames


def _readable(sock: socket.socket, wait_s: float) -> bool:
    """Whether ``sock`` has data (or EOF) within ``wait_s``. poll, not select: the
    socket keeps the parent's descriptor number, which may be over select's 1024."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(wait_s * 1000))


_STORED = ReadingOutcome()
# Per request frame of readings: when the parent sent it, and for each of its
# readings that is to be stored, its record's index in the transaction and the
# reconnects it reported.
_Sealed = list[tuple[float, list[tuple[int, float | None]]]]


class _Sealer:
    """The ingest's work on a raw reading, in the child: validation, id, envelope."""

    def __init__(self, gateway_id: str, source: Source) -> None:
        self.gateway = GatewayInfo(id=gateway_id)
        self.source: Source = source

    def seal(self, raw: RawReading) -> tuple[ReadingOutcome, NewRecord | None, float | None]:
        """The reading's outcome, its record (None: it broke a rule) and the reconnects
        it reported."""
        try:
            reading = parse_reading(raw.body)
        except ValidationFailure as exc:
            return ReadingOutcome(exc.code, exc.message), None, None
        record_id = uuid7_str()
        env = envelope_of(
            reading,
            record_id=record_id,
            tenant=raw.tenant,
            site=raw.site,
            device_id=raw.device_id,
            record_class=raw.record_class,
            source=self.source,
            gateway=self.gateway,
            received_at=timestamp_ms(raw.received_ms),
            traceparent=raw.traceparent,
        )
        record = NewRecord(
            record_id, raw.tenant, raw.device_id, reading.seq, encode_envelope(env), raw.traceparent
        )
        return _STORED, record, reading.metrics.get("reconnects")

    def records_of(
        self, frames: Sequence[_Records | _Readings]
    ) -> tuple[list[NewRecord], list[ReadingOutcome], _Sealed]:
        """The records to store, in frame order; the outcome of every raw reading; and
        what the sealed ones are counted by (_Counter.committed)."""
        records: list[NewRecord] = []
        outcomes: list[ReadingOutcome] = []
        sealed: _Sealed = []
        for frame in frames:
            if isinstance(frame, _Records):
                records.extend(frame.records)
                continue
            stored: list[tuple[int, float | None]] = []
            for raw in frame.readings:
                try:
                    outcome, record, reconnects = self.seal(raw)
                except Exception as exc:  # a bug, not the reading's fault: a 500, not a crash
                    print(f"spool writer: sealing a reading failed: {exc!r}", file=sys.stderr)
                    outcome, record = ReadingOutcome("internal_error", "internal error"), None
                outcomes.append(outcome)
                if record is not None:
                    stored.append((len(records), reconnects))
                    records.append(record)
            sealed.append((frame.sent, stored))
        return records, outcomes, sealed


class _Counter:
    """What the child counts of the readings it seals, for its service's metrics: per
    device (records, repeats, last seen, seq gaps, reconnects) and the commit
    latency of each request frame. Reported at most every COUNTS_INTERVAL_S, so
    that the event loop takes them in bulk instead of per request."""

    def __init__(self) -> None:
        self.devices = DeviceCounts()
        self.commit = BucketCounts()
        self.reported = time.monotonic()

    def committed(
        self, sealed: _Sealed, records: Sequence[NewRecord], results: Sequence[AppendResult]
    ) -> None:
        """Count the sealed readings of a committed transaction."""
        done, now = time.monotonic(), time.time()
        for sent, stored in sealed:
            if not stored:
                continue
            self.commit.add(max(0.0, done - sent))
            for index, reconnects in stored:
                self.devices.observe(records[index], results[index].duplicate, reconnects, now)

    def due_in(self) -> float | None:
        """Seconds until the counts are due (0: now); None while there are none."""
        if not self.devices and not self.commit:
            return None
        return max(0.0, self.reported + COUNTS_INTERVAL_S - time.monotonic())

    def report(self) -> Counts | None:
        """The counts since the last report if they are due (and counting starts over)."""
        if self.due_in() != 0.0:
            return None
        self.reported = time.monotonic()
        hits, total = self.commit.take()
        return Counts(self.devices.take(), hits, total)


class _Handoff:
    """The stream hand-off in the child: a thread XADDs, in commit order, the records of
    each commit, gathering those of the next ``linger_s`` into one XADD pipeline.

    A failure leaves the records Enqueued (the forwarder's reconciler hands them over
    later) and is reported in the next reply. On a thread, so that commits never wait
    for Redis; it holds the GIL only to build and parse the commands.
    """

    def __init__(self, target: HandoffTarget) -> None:
        self.target = target
        self.client = connect_blocking(target.redis_url)
        self._queue: queue.SimpleQueue[list[StreamEntry] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._failed = 0
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="stream-handoff", daemon=True)
        self._thread.start()

    def committed(self, records: Sequence[NewRecord], results: Sequence[AppendResult]) -> None:
        entries = StreamEntry.of_commit(records, results)
        if entries:
            self._queue.put(entries)

    def failures(self) -> tuple[int, str | None]:
        """Records whose hand-off failed since the last call, and the last error."""
        with self._lock:
            failed, error = self._failed, self._error
            self._failed, self._error = 0, None
        return failed, error

    def close(self) -> None:
        """Hand over what is queued (at most ``stop_timeout_s``), then stop."""
        self._queue.put(None)
        self._thread.join(self.target.stop_timeout_s)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            entries = self._queue.get()
            if entries is None:
                return
            if self.target.linger_s and self._queue.empty():
                time.sleep(self.target.linger_s)
            while not self._queue.empty() and len(entries) < _HANDOFF_MAX_ENTRIES:
                more = self._queue.get()
                if more is None:
                    stopping = True
                    break
                entries.extend(more)
            try:
                add_many_blocking(self.client, self.target.stream_key, entries)
            except (RedisError, OSError) as exc:
                print(
                    f"spool writer: stream hand-off of {len(entries)} records failed: {exc}",
                    file=sys.stderr,
                    flush=True,
                )
                with self._lock:
                    self._failed += len(entries)
                    self._error = str(exc)


def child_main(argv: Sequence[str]) -> int:
    """``python -m iotgw_core.spool_process PATH SYNC BUSY_MS MAX_BATCH FD GATEWAY SOURCE``."""
    path, synchronous, busy_ms, max_batch, fd, gateway_id, source = argv
    # Ctrl-C or a SIGTERM to the process group must not cut a commit short: the
    # parent decides when this ends, by closing its end (also when it dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Started by a pinned event loop's thread, it has the loop's CPUs: it takes the
    # service's worker CPUs, and so does its stream hand-off thread (IOTGW_*_LOOP_CPUS).
    to_worker_cpus()
    sync: Literal["FULL", "NORMAL"] = "NORMAL" if synchronous == "NORMAL" else "FULL"
    sealer = _Sealer(gateway_id, "mqtt" if source == "mqtt" else "http")
    target = os.environ.get(_HANDOFF_ENV)
    handoff = _Handoff(HandoffTarget(**json.loads(target))) if target else None
    sock = socket.socket(fileno=int(fd))
    spool = Spool(path, synchronous=sync, busy_timeout_ms=int(busy_ms), appends_only=True)
    spool.leave_checkpoints_to_others()
    counter = _Counter()
    buf = bytearray()
    try:
        while True:
            frames = _read_frames(sock, buf, int(max_batch), counter.due_in())
            if frames is None:
                return 0
            if not frames:  # idle with counts due: they go on their own
                sock.sendall(_frame(_encode(_Reply(0, [], 0, 0, counts=counter.report()))))
                continue
            records, outcomes, sealed = sealer.records_of(frames)
            try:
                if records:
                    results, totals = spool.append_batch(records)
                else:  # only readings that broke a rule: no transaction
                    results, totals = [], Totals(0, 0)
                reply = _Reply(len(frames), results, totals.records, totals.bytes, None, outcomes)
            except Exception as exc:
                reply = _Reply(len(frames), [], 0, 0, error=str(exc) or type(exc).__name__)
            if reply.error is None:
                counter.committed(sealed, records, reply.results)
                reply.counts = counter.report()
            if handoff is not None:
                if reply.error is None:
                    handoff.committed(records, reply.results)
                reply.handoff_failed, reply.handoff_error = handoff.failures()
            sock.sendall(_frame(_encode(reply)))
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the parent is gone: nobody waits for replies
    finally:
        if handoff is not None:
            handoff.close()
        spool.close()
        sock.close()


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
