"""The spool: SQLite in WAL mode, the gateway's source of truth for every record.

A record moves ``Enqueued -> InFlight -> Acked | Dead``. Ingest appends with
``synchronous=FULL``: a commit returns only after the WAL is fsynced, so a
record acknowledged to its sender survives a crash or a power cut. The
forwarder's state changes may use ``synchronous=NORMAL``: the last few
``Acked`` marks can roll back on a power cut, which costs a re-delivery
(at-least-once), never a loss. See docs/spool.md.

:class:`SpoolWriter` is the group commit: appends from many coroutines are
gathered by one writer thread into one transaction, and each sender is
answered only after that transaction committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from .process import to_worker_cpus

log = logging.getLogger(__name__)
SCHEMA_VERSION = 4
_CHUNK = 500  # bound on SQL parameters per statement
_ROWS_PER_INSERT = 256  # 10 parameters a row: well under SQLite's 32,766
_INSERT_PREFIX = (
    "INSERT INTO records(rid, id, tenant, device_id, seq, state, created_at,"
    " updated_at, traceparent, size, body) VALUES "
)
_INSERT_ROW = "(?,?,?,?,?,0,?,?,?,?,?)"

# The page size of a spool this code creates (an existing spool keeps its own).
# Every append writes one leaf page of the per-device idempotency index for every
# device in it: with 64 devices and two such indexes a 24-record commit wrote ~61
# pages, 11.4 KB of WAL and database a record at 4 KiB pages, 7.3 KB at 2 KiB
# (docs/spool.md).
PAGE_SIZE = 2048
# The background checkpointer starts the WAL over once it is this large; the
# file is cut back to it when it starts over (journal_size_limit).
WAL_RESTART_BYTES = 64 << 20
# Its pace: a round every CHECKPOINT_IDLE_S, and every CHECKPOINT_BUSY_S while the
# last round found at least CHECKPOINT_BUSY_FRAMES new WAL frames (docs/spool.md).
CHECKPOINT_IDLE_S = 1.0
CHECKPOINT_BUSY_S = 0.1
CHECKPOINT_BUSY_FRAMES = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    rid         INTEGER PRIMARY KEY,          -- spool order: commit order
    id          TEXT    NOT NULL UNIQUE,      -- UUIDv7, stable across re-deliveries
    tenant      TEXT    NOT NULL,
    device_id   TEXT    NOT NULL,
    seq         INTEGER,
    state       INTEGER NOT NULL,             -- 0 Enqueued, 1 InFlight, 2 Acked, 3 Dead
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    created_at  REAL    NOT NULL,
    updated_at  REAL    NOT NULL,
    acked_at    REAL,
    traceparent TEXT,
    size        INTEGER NOT NULL,
    body        BLOB    NOT NULL,             -- the envelope's JSON
    pending     INTEGER NOT NULL DEFAULT 1    -- 1 while Enqueued or InFlight (see _INDEXES)
);
CREATE TABLE IF NOT EXISTS totals (
    one      INTEGER PRIMARY KEY CHECK (one = 1),
    records  INTEGER NOT NULL,           -- kept by append_batch and the delete trigger
    bytes    INTEGER NOT NULL,
    next_rid INTEGER NOT NULL DEFAULT 1  -- rids are never reused, even after pruning
);
INSERT OR IGNORE INTO totals(one, records, bytes, next_rid) VALUES (1, 0, 0, 1);
CREATE TRIGGER IF NOT EXISTS tr_records_delete AFTER DELETE ON records BEGIN
    UPDATE totals SET records = records - 1, bytes = bytes - OLD.size WHERE one = 1;
END;
"""

# Every index is a B-tree that an insert or a state change writes to, and the
# forwarder changes the state of every record twice (InFlight, then Acked). So
# the "not done yet" indexes depend on `pending`, which InFlight leaves alone,
# not on `state`: an InFlight mark writes to the row and to the small InFlight
# index only. (An index whose WHERE clause or columns name an updated column
# has its entry deleted and inserted again, even when it comes out the same.)
# Acked and Dead each have their own partial index, instead of one on
# (state, updated_at) that every record passed through three times.
# The only per-device index is the idempotency key's: an append writes one of its
# leaf pages for every device in the commit. (Until schema 4 a second one,
# (tenant, device_id, rid) of open records, doubled that; the forwarder now finds
# records the stream lost by rid alone: docs/spool.md, "Indexes".)
_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS ux_records_idempotency
    ON records(tenant, device_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS ix_records_open_rid ON records(rid) WHERE pending = 1;
CREATE INDEX IF NOT EXISTS ix_records_inflight ON records(rid) WHERE state = 1;
CREATE INDEX IF NOT EXISTS ix_records_acked ON records(updated_at) WHERE state = 2;
CREATE INDEX IF NOT EXISTS ix_records_dead ON records(rid) WHERE state = 3;
"""


class State(IntEnum):
    """Life cycle of a record, named as the reference documents name it."""

    ENQUEUED = 0
    INFLIGHT = 1
    ACKED = 2
    DEAD = 3

    @property
    def label(self) -> str:
        """The state's name as shown to operators: Enqueued, InFlight, Acked, Dead."""
        return _LABELS[self]


_LABELS = {
    State.ENQUEUED: "Enqueued",
    State.INFLIGHT: "InFlight",
    State.ACKED: "Acked",
    State.DEAD: "Dead",
}


def wal_generation(db_path: Path) -> int:
    """How often the WAL of the database at ``db_path`` has started over: its header's
    checkpoint sequence number (https://www.sqlite.org/fileformat.html#wal_file_format);
    -1 while there is no WAL."""
    try:
        with open(f"{db_path}-wal", "rb") as wal:
            header = wal.read(16)
    except FileNotFoundError:
        return -1
    return int.from_bytes(header[12:16], "big") if len(header) == 16 else -1


def checkpoint_round(conn: sqlite3.Connection, restart_bytes: int = WAL_RESTART_BYTES) -> int:
    """One background checkpoint: PASSIVE, then RESTART once the WAL is that large.

    Returns the WAL's frames before it (see Spool.checkpoint_in_background).
    """
    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    page = int(conn.execute("PRAGMA page_size").fetchone()[0])
    if frames * page >= restart_bytes:
        conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    return int(frames)


class CheckpointPace:
    """When the background checkpointer's next round comes, from what the last one found.

    Each round's copy ends with an fsync of the database file; on ext4 a commit's
    fsync of the WAL waits for the data that fsync is writing. A second's worth of
    WAL under full ingest load made commits stall for 10-40 ms about once a second,
    which set the HTTP p99 (docs/performance.md); a tenth of that stalls them for a
    few ms. While little is written, rounds stay a second apart, so an idle spool
    does not fsync ten times a second.
    """

    def __init__(
        self,
        idle_s: float = CHECKPOINT_IDLE_S,
        busy_s: float = CHECKPOINT_BUSY_S,
        busy_frames: int = CHECKPOINT_BUSY_FRAMES,
    ) -> None:
        self.idle_s, self.busy_s, self.busy_frames = idle_s, busy_s, busy_frames
        self._last: tuple[int, int] = (-1, 0)  # the WAL's generation and frames

    def after(self, generation: int, frames: int) -> float:
        """Seconds until the next round, given the WAL's generation (see
        :func:`wal_generation`) and frames at this one."""
        last_generation, last_frames = self._last
        # A WAL that started over since holds only frames written since.
        new = frames - last_frames if generation == last_generation else frames
        self._last = (generation, frames)
        return self.busy_s if new >= self.busy_frames else self.idle_s

    def after_error(self) -> float:
        """Seconds until the next round after one that failed (busy, I/O)."""
        return self.idle_s


class SpoolError(Exception):
    """The spool could not do what was asked (disk full, I/O error, locked too long)."""


class NewRecord(msgspec.Struct, frozen=True):
    """A record to append: its envelope already serialized."""

    id: str
    tenant: str
    device_id: str
    seq: int | None
    body: bytes
    traceparent: str | None = None


class AppendResult(msgspec.Struct, frozen=True):
    """Outcome of one append. For a duplicate, ``id``/``rid`` are the original record's."""

    id: str
    rid: int
    duplicate: bool
    state: State


class StoredRecord(msgspec.Struct, frozen=True, gc=False):
    """A record as the spool holds it.

    A msgspec Struct rather than a frozen dataclass: the forwarder builds one per
    record it loads, and a frozen dataclass's ``__init__`` (one ``object.__setattr__``
    a field) cost ten times as much. Replace fields with ``msgspec.structs.replace``.
    """

    rid: int
    id: str
    tenant: str
    device_id: str
    seq: int | None
    state: State
    attempts: int
    last_error: str | None
    created_at: float
    traceparent: str | None
    body: bytes

    @property
    def device_key(self) -> tuple[str, str]:
        """Per-device ordering key."""
        return (self.tenant, self.device_id)


@dataclass(frozen=True, slots=True)
class Totals:
    """Records and bytes held, all states together (what the budget counts)."""

    records: int
    bytes: int


_RECORD_COLUMNS = (
    "rid, id, tenant, device_id, seq, state, attempts, last_error, created_at, traceparent, body"
)


_STATES = tuple(State)


def _row_to_record(row: tuple[Any, ...]) -> StoredRecord:
    # The columns' types are the schema's (INTEGER PRIMARY KEY, TEXT NOT NULL, REAL,
    # BLOB), as written by this module: SQLite hands them back as int, str, float and
    # bytes, so no conversion is needed, only the state's enum member.
    rid, rid_id, tenant, device, seq, state, attempts, err, created, tp, body = row
    return StoredRecord(
        rid, rid_id, tenant, device, seq, _STATES[state], attempts, err, created, tp, body
    )


def _chunks(items: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class Spool:
    """Synchronous access to the spool file; every method is one transaction.

    Thread-safe: calls are serialized by a lock (SQLite serializes writers
    anyway); other processes may open the same file concurrently.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout_ms: int = 30_000,
        appends_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous: Literal["FULL", "NORMAL"] = synchronous
        self._busy_timeout_s = busy_timeout_ms / 1000
        # An appends-only connection (SpoolWriter's) has SQLite's busy handler off for
        # good: _begin_write is its only wait. See _begin_write.
        self._appends_only = appends_only
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=30
        )
        self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # Before anything is written: it takes effect only on a file with no page yet.
        self._conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(f"{self.path}: could not switch to WAL mode (got {mode})")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        # Statement journals (a multi-row INSERT or UPDATE inside a transaction keeps
        # the original of every page it changes, to undo just that statement) and
        # temporary sort tables in memory: with files, each append transaction
        # created, wrote ~60 pages to and deleted a file in /var/tmp (measured with
        # strace: 158 -> 100 syscalls a 24-record commit). Crash safety is the
        # WAL's; a statement journal is never needed after a crash.
        self._conn.execute("PRAGMA temp_store=MEMORY")
        with self._lock:
            # One transaction: processes opening the same spool at once (ingest,
            # forwarder) see it either before or after the migration, never half-way.
            self._conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA)
            try:
                self._migrate()
                for statement in _INDEXES.split(";"):
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            if appends_only:
                self._conn.execute("PRAGMA busy_timeout=0")

    @property
    def busy_timeout_ms(self) -> int:
        """How long a write waits for another writer's lock before SpoolError."""
        return int(self._busy_timeout_s * 1000)

    def appends_connection(self) -> Spool:
        """A second connection to this spool for :meth:`append_batch` only (SpoolWriter's)."""
        return Spool(
            self.path,
            synchronous=self.synchronous,
            busy_timeout_ms=int(self._busy_timeout_s * 1000),
            appends_only=True,
        )

    def _begin_write(self) -> None:
        """BEGIN IMMEDIATE (take the write lock), waiting for another writer in short steps.

        SQLite's own busy handler sleeps 1, 2, 5, 10, ... ms between tries; two
        processes sharing the file (ingest and forwarder) would make a sender
        wait those steps. Here the lock is retried every 0.2-2 ms, up to the
        busy timeout, with the busy handler off; :meth:`_write` turns it back on
        after the transaction (an appends-only connection keeps it off). Must be
        called with ``self._lock`` held.

        Every statement drops the GIL and has to take it back from a busy
        event-loop thread, 1-5 ms under load (`make bench`), and a write
        transaction holds the lock other processes wait for: the fewer
        statements inside it, the better.
        """
        deadline = time.monotonic() + self._busy_timeout_s
        pause = 0.0002
        if not self._appends_only:
            self._conn.execute("PRAGMA busy_timeout=0")
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 1.5, 0.002)

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Cursor]:
        """One write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT``.

        An SQLite error rolls back and becomes ``SpoolError("<what> failed: ...")``.
        Must be entered with ``self._lock`` held.
        """
        try:
            self._begin_write()
            yield self._conn.cursor()
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise SpoolError(f"{what} failed: {exc}") from exc
            raise
        finally:
            if not self._appends_only:  # outside the transaction: not while holding the lock
                self._conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")

    def _migrate(self) -> None:
        """Bring an older spool file up to SCHEMA_VERSION (inside the opening transaction)."""
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        run = self._conn.execute
        if version == 1:  # totals kept by an insert trigger; rids from SQLite
            run("DROP TRIGGER IF EXISTS tr_records_insert")
            run("ALTER TABLE totals ADD COLUMN next_rid INTEGER NOT NULL DEFAULT 1")
            run("UPDATE totals SET next_rid = (SELECT coalesce(max(rid), 0) + 1 FROM records)")
        if 0 < version < 3:  # state-keyed indexes -> `pending` and partial indexes
            run("ALTER TABLE records ADD COLUMN pending INTEGER NOT NULL DEFAULT 1")
            run("UPDATE records SET pending = 0 WHERE state IN (2, 3)")
            for old in ("ix_records_pending", "ix_records_pending_rid", "ix_records_state"):
                run(f"DROP INDEX IF EXISTS {old}")
        if 0 < version < 4:  # the per-device index of open records is gone
            run("DROP INDEX IF EXISTS ix_records_open")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def leave_checkpoints_to_others(self) -> None:
        """No WAL checkpoint on this connection's commits (another connection runs them)."""
        with self._lock:
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
            self._conn.execute(f"PRAGMA journal_size_limit={WAL_RESTART_BYTES}")

    def checkpoint_in_background(
        self, pace: CheckpointPace | None = None, restart_bytes: int = WAL_RESTART_BYTES
    ) -> threading.Event:
        """Move WAL checkpoints off this connection's commits, onto a thread of their own.

        By default the commit that pushes the WAL past 1,000 pages also copies it
        into the database and fsyncs that: one sender in a thousand pages waits
        for it. Here a separate connection checkpoints (PASSIVE: never blocks a
        writer) at the ``pace`` given (:class:`CheckpointPace`: every second, and
        every 0.1 s while writes keep coming). Set the returned event to stop the thread.

        PASSIVE alone lets the WAL grow without bound under steady writes: SQLite
        starts the WAL over only when a write finds every frame checkpointed, and
        with ingest and forwarder writing all the time one always comes first (a
        100,000-record backlog drained by the forwarder left a 1 GB WAL, and the
        write that finally started it over stalled senders for 200-300 ms while
        it cut the file down). So once the WAL passes ``restart_bytes``, a
        RESTART checkpoint follows the PASSIVE one: it takes the write lock only
        to copy the few frames written since, and lets the next write start the
        WAL from its beginning, so the file stays near ``restart_bytes``.
        """
        self.leave_checkpoints_to_others()
        stop = threading.Event()
        pace = pace or CheckpointPace()

        def run() -> None:
            to_worker_cpus()  # off a pinned event loop's CPUs (IOTGW_*_LOOP_CPUS)
            conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            try:
                wait_s = pace.idle_s
                while not stop.wait(wait_s):
                    try:
                        # The generation before the round: a write that starts the WAL
                        # over can come right after it, not during it.
                        generation = wal_generation(self.path)
                        frames = checkpoint_round(conn, restart_bytes)
                        wait_s = pace.after(generation, frames)
                    except sqlite3.Error as exc:  # busy or I/O: the next round tries again
                        log.debug("background checkpoint: %s", exc)
                        wait_s = pace.after_error()
            finally:
                conn.close()

        threading.Thread(target=run, name="spool-checkpoint", daemon=True).start()
        return stop

    # -- appends (ingest) ---------------------------------------------------------

    def append_batch(self, records: Sequence[NewRecord]) -> tuple[list[AppendResult], Totals]:
        """Append records in one committed transaction; repeats of a key are duplicates.

        Returns a result per record, in order, and the spool totals after the commit.
        The write lock (BEGIN IMMEDIATE) is held from the duplicate check to the
        commit, so other writers (another ingest process) cannot interleave.
        """
        now = time.time()
        results: list[AppendResult | None] = [None] * len(records)
        fresh: list[tuple[int, NewRecord]] = []  # (index in records, record) to insert
        repeats: list[tuple[int, int]] = []  # (index in records, its key's position in fresh)
        added_bytes = 0
        with self._lock, self._write("append") as cur:
            known = self._stored_keys(cur, records)
            first_of_key: dict[tuple[str, str, int | None], int] = {}
            for index, rec in enumerate(records):
                key = (rec.tenant, rec.device_id, rec.seq)
                if rec.seq is not None:
                    if key in known:
                        results[index] = known[key]
                        continue
                    if key in first_of_key:  # a repeat later in this same batch
                        repeats.append((index, first_of_key[key]))
                        continue
                    first_of_key[key] = len(fresh)
                fresh.append((index, rec))
                added_bytes += len(rec.body)
            # rids, the budget and the new totals in one statement: every
            # statement here drops and re-takes the GIL (see _begin_write).
            first_rid, records_total, bytes_total = cur.execute(
                "UPDATE totals SET records = records + ?, bytes = bytes + ?,"
                " next_rid = next_rid + ? RETURNING next_rid - ?, records, bytes",
                (len(fresh), added_bytes, len(fresh), len(fresh)),
            ).fetchone()
            first_rid = int(first_rid)
            rows: list[tuple[object, ...]] = []
            for offset, (index, rec) in enumerate(fresh):
                rid = first_rid + offset
                results[index] = AppendResult(rec.id, rid, False, State.ENQUEUED)
                rows.append(
                    (
                        rid,
                        rec.id,
                        rec.tenant,
                        rec.device_id,
                        rec.seq,
                        now,
                        now,
                        rec.traceparent,
                        len(rec.body),
                        rec.body,
                    )
                )
            for index, position in repeats:
                rec = fresh[position][1]
                results[index] = AppendResult(rec.id, first_rid + position, True, State.ENQUEUED)
            # One multi-row statement per chunk: executemany would step (and drop
            # and re-take the GIL) once per row.
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                chunk = rows[start : start + _ROWS_PER_INSERT]
                cur.execute(
                    _INSERT_PREFIX + ",".join([_INSERT_ROW] * len(chunk)),
                    [value for row in chunk for value in row],
                )
        return [r for r in results if r is not None], Totals(int(records_total), int(bytes_total))

    @staticmethod
    def _stored_keys(
        cur: sqlite3.Cursor, records: Sequence[NewRecord]
    ) -> dict[tuple[str, str, int | None], AppendResult]:
        """Records already stored under the (tenant, device_id, seq) keys of ``records``."""
        keys = list({(r.tenant, r.device_id, r.seq) for r in records if r.seq is not None})
        found: dict[tuple[str, str, int | None], AppendResult] = {}
        for start in range(0, len(keys), 300):
            chunk = keys[start : start + 300]
            marks = ",".join(["(?,?,?)"] * len(chunk))
            params = [value for key in chunk for value in key]
            for tenant, device, seq, rec_id, rid, state in cur.execute(
                f"WITH k(t, d, s) AS (VALUES {marks})"
                " SELECT r.tenant, r.device_id, r.seq, r.id, r.rid, r.state"
                " FROM k CROSS JOIN records r"
                " WHERE r.tenant = k.t AND r.device_id = k.d AND r.seq = k.s",
                params,
            ):
                found[(tenant, device, seq)] = AppendResult(rec_id, int(rid), True, State(state))
        return found

    # -- reads --------------------------------------------------------------------

    def load(self, rids: Sequence[int]) -> list[StoredRecord]:
        """Records with these rids, in spool order (missing rids are skipped)."""
        out: list[StoredRecord] = []
        with self._lock:
            for chunk in _chunks(rids):
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT {_RECORD_COLUMNS} FROM records WHERE rid IN ({marks})", tuple(chunk)
                ).fetchall()
                out.extend(_row_to_record(r) for r in rows)
        out.sort(key=lambda r: r.rid)
        return out

    def get(self, record_id: str) -> StoredRecord | None:
        """One record by its id."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records WHERE id=?", (record_id,)
            ).fetchone()
        return None if row is None else _row_to_record(row)

    def pending_rids_between(self, after_rid: int, upto_rid: int, limit: int) -> list[int]:
        """Rids of the Enqueued/InFlight records with ``after_rid < rid <= upto_rid``,
        oldest first, at most ``limit``: from ix_records_open_rid alone, without the
        rows (the forwarder's check for records the stream lost)."""
        with self._lock:
            return [
                int(rid)
                for (rid,) in self._conn.execute(
                    "SELECT rid FROM records WHERE pending=1 AND rid > ? AND rid <= ?"
                    " ORDER BY rid LIMIT ?",
                    (after_rid, upto_rid, limit),
                )
            ]

    def pending_after(
        self, after_rid: int, limit: int, created_before: float
    ) -> list[tuple[int, str, str, str, str | None]]:
        """(rid, id, tenant, device_id, traceparent) of Enqueued/InFlight records, by rid."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT rid, id, tenant, device_id, traceparent FROM records"
                " WHERE pending=1 AND rid > ? AND created_at < ? ORDER BY rid LIMIT ?",
                (after_rid, created_before, limit),
            ).fetchall()
        return [(int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4]) for r in rows]

    def totals(self) -> Totals:
        """Records and bytes held (all states)."""
        with self._lock:
            row = self._conn.execute("SELECT records, bytes FROM totals").fetchone()
        return Totals(int(row[0]), int(row[1]))

    def counts_by_state(self) -> dict[str, int]:
        """Number of records in each state, by label.

        Costs in proportion to the records not yet done and the dead letters,
        not to the whole spool: Acked (most of a healthy spool) is the total
        minus the others.
        """
        counts = {label: 0 for label in _LABELS.values()}
        with self._lock:
            self._conn.execute("BEGIN")  # one snapshot for the three reads
            try:
                one = self._conn.execute
                open_ = int(one("SELECT count(*) FROM records WHERE pending=1").fetchone()[0])
                counts["InFlight"] = int(
                    one("SELECT count(*) FROM records WHERE state=1").fetchone()[0]
                )
                counts["Enqueued"] = open_ - counts["InFlight"]
                dead = self._conn.execute("SELECT count(*) FROM records WHERE state = 3")
                counts["Dead"] = int(dead.fetchone()[0])
                total = int(self._conn.execute("SELECT records FROM totals").fetchone()[0])
            finally:
                self._conn.execute("COMMIT")
        counts["Acked"] = total - counts["Enqueued"] - counts["InFlight"] - counts["Dead"]
        return counts

    def oldest_pending_created_at(self) -> float | None:
        """Creation time of the oldest Enqueued/InFlight record, if any."""
        with self._lock:
            row = self._conn.execute(
                "SELECT created_at FROM records WHERE pending=1 ORDER BY rid LIMIT 1"
            ).fetchone()
        return None if row is None else float(row[0])

    # -- state changes (forwarder) --------------------------------------------------

    def _update(self, sql: str, params: Sequence[object], rids: Sequence[int]) -> int:
        # The state changes below write ``+state``: the unary plus keeps SQLite's planner
        # from using an index for the state term. (With the former index on (state,
        # updated_at), an IN list of ten or more rids made it walk every record in that
        # state, the whole backlog, instead of looking the rids up by primary key.)
        changed = 0
        with self._lock, self._write("update") as cur:
            for chunk in _chunks(rids):
                marks = ",".join("?" * len(chunk))
                changed += cur.execute(sql.format(marks=marks), (*params, *chunk)).rowcount
        return changed

    def mark_inflight(self, rids: Sequence[int]) -> int:
        """Enqueued -> InFlight for records handed to a sink."""
        return self._update(
            "UPDATE records SET state=1, updated_at=? WHERE +state=0 AND rid IN ({marks})",
            (time.time(),),
            rids,
        )

    def mark_acked(self, rids: Sequence[int]) -> int:
        """Enqueued/InFlight -> Acked once the sink acknowledged them."""
        now = time.time()
        return self._update(
            "UPDATE records SET state=2, pending=0, attempts=attempts+1, updated_at=?,"
            " acked_at=?, last_error=NULL WHERE +state IN (0,1) AND rid IN ({marks})",
            (now, now),
            rids,
        )

    def record_failure(self, rids: Sequence[int], error: str) -> int:
        """Count a failed attempt; the records go back to Enqueued to wait for a retry."""
        return self._update(
            "UPDATE records SET state=0, attempts=attempts+1, last_error=?, updated_at=?"
            " WHERE +state IN (0,1) AND rid IN ({marks})",
            (error[:1000], time.time()),
            rids,
        )

    def requeue(self, rids: Sequence[int]) -> int:
        """InFlight -> Enqueued for records a sink did not try (no attempt spent)."""
        return self._update(
            "UPDATE records SET state=0, updated_at=? WHERE +state=1 AND rid IN ({marks})",
            (time.time(),),
            rids,
        )

    def note_error(self, rids: Sequence[int], error: str) -> int:
        """Record why delivery is waiting without spending an attempt (sink unreachable)."""
        return self._update(
            "UPDATE records SET state=0, last_error=?, updated_at=?"
            " WHERE +state IN (0,1) AND rid IN ({marks})",
            (error[:1000], time.time()),
            rids,
        )

    def mark_dead(self, rids: Sequence[int], error: str, *, count_attempt: bool = True) -> int:
        """Enqueued/InFlight -> Dead with the last error; kept until replayed or purged."""
        return self._update(
            "UPDATE records SET state=3, pending=0, attempts=attempts+?, last_error=?,"
            " updated_at=?"
            " WHERE +state IN (0,1) AND rid IN ({marks})",
            (1 if count_attempt else 0, error[:1000], time.time()),
            rids,
        )

    # -- retention ------------------------------------------------------------------

    def prune_acked(self, older_than: float, limit: int = 10_000) -> int:
        """Delete up to ``limit`` Acked records acknowledged before ``older_than``.

        Never touches Enqueued, InFlight or Dead records.
        """
        return self._delete_acked(
            "SELECT rid FROM records WHERE state=2 AND updated_at < ? ORDER BY updated_at LIMIT ?",
            (older_than, limit),
        )

    def prune_oldest_acked(self, count: int) -> int:
        """Delete the ``count`` oldest Acked records, to make room under the budget."""
        return self._delete_acked(
            "SELECT rid FROM records WHERE state=2 ORDER BY updated_at LIMIT ?", (count,)
        )

    def _delete_acked(self, select: str, params: tuple[object, ...]) -> int:
        with self._lock, self._write("prune") as cur:
            deleted = cur.execute(
                f"DELETE FROM records WHERE state=2 AND rid IN ({select})", params
            ).rowcount
        return deleted

    # -- dead letters and operations (admin API) -------------------------------------------

    @staticmethod
    def _dead_where(flt: DeadLetterFilter) -> tuple[str, list[object]]:
        clauses = ["state=3"]
        params: list[object] = []
        if flt.ids is not None:
            clauses.append(f"id IN ({','.join('?' * len(flt.ids))})")
            params.extend(flt.ids)
        if flt.tenant is not None:
            clauses.append("tenant=?")
            params.append(flt.tenant)
        if flt.device_id is not None:
            clauses.append("device_id=?")
            params.append(flt.device_id)
        if flt.reason is not None:
            # Reasons start with a stable code ("payload_too_large: ..."): a prefix match.
            clauses.append("substr(last_error, 1, ?) = ?")
            params.extend((len(flt.reason), flt.reason))
        if flt.since is not None:
            clauses.append("updated_at >= ?")
            params.append(flt.since)
        if flt.until is not None:
            clauses.append("updated_at < ?")
            params.append(flt.until)
        return " AND ".join(clauses), params

    def list_dead(
        self, flt: DeadLetterFilter, *, after_rid: int = 0, limit: int = 100
    ) -> list[DeadLetter]:
        """Dead records matching ``flt`` in spool order, ``limit`` after ``after_rid`` (paging)."""
        if flt.ids is not None and len(flt.ids) > _CHUNK:
            raise SpoolError(f"at most {_CHUNK} ids at once")
        where, params = self._dead_where(flt)
        with self._lock:
            rows = self._conn.execute(
                "SELECT rid, id, tenant, device_id, seq, attempts, last_error, created_at,"
                f" updated_at, size FROM records WHERE {where} AND rid > ? ORDER BY rid LIMIT ?",
                (*params, after_rid, limit),
            ).fetchall()
        return [
            DeadLetter(
                rid=int(r[0]),
                id=str(r[1]),
                tenant=str(r[2]),
                device_id=str(r[3]),
                seq=None if r[4] is None else int(r[4]),
                attempts=int(r[5]),
                reason=str(r[6] or ""),
                created_at=float(r[7]),
                dead_at=float(r[8]),
                size=int(r[9]),
            )
            for r in rows
        ]

    def replay(self, flt: DeadLetterFilter, limit: int = 1000) -> list[StoredRecord]:
        """Dead -> Enqueued (attempts reset) for up to ``limit`` matching records.

        Returns them in spool order, to be handed to the stream again.
        """
        if flt.ids is not None and len(flt.ids) > _CHUNK:
            raise SpoolError(f"at most {_CHUNK} ids at once")
        where, params = self._dead_where(flt)
        with self._lock, self._write("replay") as cur:
            rows = cur.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records WHERE {where} ORDER BY rid LIMIT ?",
                (*params, limit),
            ).fetchall()
            rids = [int(r[0]) for r in rows]
            now = time.time()
            for chunk in _chunks(rids):
                marks = ",".join("?" * len(chunk))
                cur.execute(
                    "UPDATE records SET state=0, pending=1, attempts=0, last_error=NULL,"
                    f" updated_at=? WHERE state=3 AND rid IN ({marks})",
                    (now, *chunk),
                )
        out = []
        for row in rows:
            rec = _row_to_record(row)
            out.append(
                StoredRecord(
                    rid=rec.rid,
                    id=rec.id,
                    tenant=rec.tenant,
                    device_id=rec.device_id,
                    seq=rec.seq,
                    state=State.ENQUEUED,
                    attempts=0,
                    last_error=None,
                    created_at=rec.created_at,
                    traceparent=rec.traceparent,
                    body=rec.body,
                )
            )
        return out

    def purge(self, flt: DeadLetterFilter, limit: int = 100_000) -> int:
        """Delete up to ``limit`` Dead records matching ``flt``; never touches other states."""
        if flt.ids is not None and len(flt.ids) > _CHUNK:
            raise SpoolError(f"at most {_CHUNK} ids at once")
        where, params = self._dead_where(flt)
        with self._lock, self._write("purge") as cur:
            purged = cur.execute(
                "DELETE FROM records WHERE state=3 AND rid IN"
                f" (SELECT rid FROM records WHERE {where} ORDER BY rid LIMIT ?)",
                (*params, limit),
            ).rowcount
        return purged

    def summary(self) -> dict[str, object]:
        """Counts by state, bytes, the oldest pending and Dead ages, Dead by reason code."""
        counts = self.counts_by_state()
        totals = self.totals()
        now = time.time()
        with self._lock:
            oldest_dead = self._conn.execute(
                "SELECT min(updated_at) FROM records WHERE state=3"
            ).fetchone()[0]
            reasons = self._conn.execute(
                "SELECT CASE WHEN instr(last_error, ':') > 0"
                " THEN substr(last_error, 1, instr(last_error, ':') - 1)"
                " ELSE coalesce(last_error, '') END AS code, count(*)"
                " FROM records WHERE state=3 GROUP BY code ORDER BY count(*) DESC LIMIT 50"
            ).fetchall()
        oldest = self.oldest_pending_created_at()
        return {
            "counts": counts,
            "records": totals.records,
            "bytes": totals.bytes,
            "oldest_pending_age_s": None if oldest is None else round(now - oldest, 3),
            "oldest_dead_age_s": None if oldest_dead is None else round(now - oldest_dead, 3),
            "dead_by_reason": {str(code): int(n) for code, n in reasons},
        }


@dataclass(slots=True)
class _Pending:
    records: Sequence[NewRecord]
    future: asyncio.Future[list[AppendResult]]


_STOP = object()


class Committed(Protocol):
    """What a commit hook learns of each stored record besides its result."""

    @property
    def tenant(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def traceparent(self) -> str | None: ...


CommitHook = Callable[[Sequence[Committed], Sequence[AppendResult], Totals], None]


class SpoolWriter:
    """Group commit: concurrent appends share one transaction on a writer thread.

    ``append`` resolves only after the transaction holding the record committed.
    ``on_commit`` runs on the event loop after each commit, in commit order.
    """

    def __init__(self, spool: Spool, *, max_batch: int = 1024, on_commit: CommitHook | None = None):
        self.spool = spool
        # Its own connection: no PRAGMA round trips around each commit, and no
        # waiting on the lock of the connection other threads use for reads.
        self._appends: Spool | None = None
        self.max_batch = max_batch
        self.on_commit = on_commit
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.last_batch_size = 0
        self._checkpointer: threading.Event | None = None

    def start(self) -> None:
        """Start the writer thread (and the WAL checkpointer), bound to the running loop."""
        self._loop = asyncio.get_running_loop()
        self._appends = self.spool.appends_connection()
        self._appends.leave_checkpoints_to_others()
        self._checkpointer = self.spool.checkpoint_in_background()
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._thread.start()

    async def append(self, record: NewRecord) -> AppendResult:
        """Append one record; returns after its transaction committed."""
        return (await self.append_many((record,)))[0]

    async def append_many(self, records: Sequence[NewRecord]) -> list[AppendResult]:
        """Append records in one transaction; returns after it committed."""
        if self._loop is None:
            raise SpoolError("spool writer is not started")
        future: asyncio.Future[list[AppendResult]] = self._loop.create_future()
        self._queue.put(_Pending(records, future))
        # A sender that goes away cancels only its wait: the record is committed anyway.
        return await future

    async def stop(self) -> None:
        """Commit what is queued, then stop the writer thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self._appends is not None:
            self._appends.close()
            self._appends = None
        if self._checkpointer is not None:
            self._checkpointer.set()

    def _run(self) -> None:
        assert self._loop is not None and self._appends is not None
        to_worker_cpus()
        loop, appends = self._loop, self._appends
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            assert isinstance(first, _Pending)
            batch = [first]
            count = len(first.records)
            while count < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Pending)
                batch.append(item)
                count += len(item.records)
            records = [rec for pending in batch for rec in pending.records]
            try:
                results, totals = appends.append_batch(records)
            except Exception as exc:
                loop.call_soon_threadsafe(self._fail, batch, exc)
                continue
            self.last_batch_size = len(records)
            loop.call_soon_threadsafe(self._complete, batch, records, results, totals)

    def _complete(
        self,
        batch: list[_Pending],
        records: list[NewRecord],
        results: list[AppendResult],
        totals: Totals,
    ) -> None:
        if self.on_commit is not None:
            self.on_commit(records, results, totals)
        offset = 0
        for pending in batch:
            n = len(pending.records)
            if not pending.future.done():
                pending.future.set_result(results[offset : offset + n])
            offset += n

    @staticmethod
    def _fail(batch: list[_Pending], exc: Exception) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(
                    exc if isinstance(exc, SpoolError) else SpoolError(str(exc))
                )


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which Dead records an admin operation means; ``None`` fields match everything."""

    ids: Sequence[str] | None = None
    tenant: str | None = None
    device_id: str | None = None
    reason: str | None = None
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A Dead record as the admin API lists it (without its body)."""

    rid: int
    id: str
    tenant: str
    device_id: str
    seq: int | None
    attempts: int
    reason: str
    created_at: float
    dead_at: float
    size: int
