"""The spool on real SQLite files: states, idempotency, group commit, budget, retention."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import msgspec
import pytest
from iotgw_core.spool import (
    PAGE_SIZE,
    CheckpointPace,
    NewRecord,
    Spool,
    SpoolError,
    SpoolWriter,
    State,
    checkpoint_round,
    wal_generation,
)

pytestmark = pytest.mark.unit


def rec(n: int, device: str = "d1", seq: int | None = None, size: int = 10) -> NewRecord:
    return NewRecord(id=f"id-{device}-{n}", tenant="t", device_id=device, seq=seq, body=b"x" * size)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool.db")


def test_wal_mode_and_full_sync_for_appends(spool: Spool) -> None:
    conn = sqlite3.connect(spool.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert spool._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    # Statement journals in memory: no temporary file per append transaction.
    for connection in (spool, spool.appends_connection()):
        assert connection._conn.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY


def test_append_then_life_cycle(spool: Spool) -> None:
    results, totals = spool.append_batch([rec(1, seq=1), rec(2, seq=2)])
    assert [r.state for r in results] == [State.ENQUEUED, State.ENQUEUED]
    assert results[0].rid < results[1].rid
    assert totals.records == 2 and totals.bytes == 20
    a, b = (r.rid for r in results)
    assert spool.mark_inflight([a, b]) == 2
    assert spool.record_failure([a], "boom") == 1
    got = spool.load([a])[0]
    assert (got.state, got.attempts, got.last_error) == (State.ENQUEUED, 1, "boom")
    assert spool.mark_acked([a]) == 1
    assert spool.mark_dead([b], "record_too_large") == 1
    assert spool.counts_by_state() == {"Enqueued": 0, "InFlight": 0, "Acked": 1, "Dead": 1}
    # Acked and Dead are final: nothing moves them back.
    assert spool.mark_inflight([a, b]) == 0 and spool.mark_acked([b]) == 0


def test_same_tenant_device_seq_is_a_duplicate(spool: Spool) -> None:
    first, _ = spool.append_batch([rec(1, seq=7)])
    again, totals = spool.append_batch([rec(2, seq=7), rec(3, device="d2", seq=7), rec(4)])
    assert again[0].duplicate and again[0].id == first[0].id and again[0].rid == first[0].rid
    assert not again[1].duplicate and not again[2].duplicate
    assert totals.records == 3


def test_duplicate_within_one_transaction(spool: Spool) -> None:
    results, totals = spool.append_batch([rec(1, seq=9), rec(2, seq=9)])
    assert [r.duplicate for r in results] == [False, True]
    assert results[1].id == results[0].id and totals.records == 1
    assert results[1].rid == results[0].rid


def test_mixed_batch_gets_contiguous_rids_and_exact_totals(spool: Spool) -> None:
    (stored,), _ = spool.append_batch([rec(1, seq=1)])
    batch = [rec(2, seq=2), rec(3, seq=1), rec(4), rec(5, seq=2), rec(6, seq=3, size=5)]
    results, totals = spool.append_batch(batch)
    assert [r.duplicate for r in results] == [False, True, False, True, False]
    assert results[1].id == stored.id and results[1].rid == stored.rid
    assert results[3].id == results[0].id and results[3].rid == results[0].rid
    fresh = [results[i].rid for i in (0, 2, 4)]
    assert fresh == list(range(stored.rid + 1, stored.rid + 4))
    assert (totals.records, totals.bytes) == (4, 10 + 10 + 10 + 5)
    assert spool.totals() == totals
    assert [r.id for r in spool.load(fresh)] == ["id-d1-2", "id-d1-4", "id-d1-6"]


def test_appends_connection_waits_for_another_writer_in_short_steps(spool: Spool) -> None:
    appends = spool.appends_connection()
    # SQLite's own busy handler (1, 2, 5, 10 ms sleeps) is off on it for good.
    assert appends._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    other = sqlite3.connect(spool.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.3, other.execute, ("COMMIT",))
    timer.start()
    started = time.monotonic()
    (result,), totals = appends.append_batch([rec(1, seq=1)])
    waited = time.monotonic() - started
    timer.join()
    assert waited >= 0.25, "the append must have waited for the other writer's lock"
    assert totals.records == 1 and spool.get(result.id) is not None


def test_appends_connection_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", busy_timeout_ms=200)
    appends = spool.appends_connection()
    other = sqlite3.connect(spool.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(SpoolError, match="locked"):
        appends.append_batch([rec(1)])
    other.execute("ROLLBACK")
    assert appends.append_batch([rec(2)])[1].records == 1


def test_records_without_seq_are_never_duplicates(spool: Spool) -> None:
    results, _ = spool.append_batch([rec(1), rec(2)])
    assert not any(r.duplicate for r in results)


def test_prune_removes_only_old_acked(spool: Spool) -> None:
    results, _ = spool.append_batch([rec(i) for i in range(8)])
    rids = [r.rid for r in results]
    spool.mark_acked(rids[:2])
    spool.mark_dead(rids[2:4], "bad")
    spool.mark_inflight(rids[4:6])
    assert spool.prune_acked(older_than=time.time() + 1) == 2
    assert spool.prune_oldest_acked(100) == 0
    assert spool.counts_by_state() == {"Enqueued": 2, "InFlight": 2, "Acked": 0, "Dead": 2}
    assert spool.totals().records == 6


def test_prune_keeps_acked_inside_retention(spool: Spool) -> None:
    results, _ = spool.append_batch([rec(1)])
    spool.mark_acked([results[0].rid])
    assert spool.prune_acked(older_than=time.time() - 3600) == 0


def test_pending_rids_between_are_the_open_records_in_commit_order(spool: Spool) -> None:
    results, _ = spool.append_batch([rec(i, device="abc"[i % 3]) for i in range(30)])
    rids = [r.rid for r in results]
    spool.mark_acked([rids[0], rids[4]])
    spool.mark_dead([rids[2]], "bad")
    spool.mark_inflight([rids[3]])  # InFlight is still open
    gone = {rids[0], rids[4], rids[2]}
    want = [rid for rid in rids if rid not in gone]
    assert spool.pending_rids_between(0, 10**9, 100) == want
    assert spool.pending_rids_between(rids[1], rids[9], 100) == [
        rid for rid in want if rids[1] < rid <= rids[9]
    ]
    assert spool.pending_rids_between(0, 10**9, 3) == want[:3]
    assert spool.pending_rids_between(rids[-1], 10**9, 100) == []
    # From the index of open rids alone, not a walk over the table's rows.
    (plan,) = spool._conn.execute(
        "EXPLAIN QUERY PLAN SELECT rid FROM records WHERE pending=1 AND rid > ? AND rid <= ?"
        " ORDER BY rid LIMIT ?",
        (0, 1, 1),
    ).fetchall()
    assert "USING INDEX ix_records_open_rid" in plan[3], plan


def test_an_append_writes_one_per_device_index_only(spool: Spool) -> None:
    # Each per-device index costs a leaf page for every device in a commit (WAL bytes
    # and CPU; docs/spool.md, "Indexes"): the idempotency key's is the only one.
    statements: list[str] = []
    spool._conn.set_trace_callback(statements.append)
    spool.append_batch([rec(i, device=f"d{i}", seq=i) for i in range(3)])
    spool._conn.set_trace_callback(None)
    (insert,) = [s for s in statements if s.startswith("INSERT INTO records")]
    roots = dict(spool._conn.execute("SELECT rootpage, name FROM sqlite_master WHERE rootpage"))
    params = ",".join(["(?,?,?,?,?,0,?,?,?,?,?)"] * 3)
    written = {
        roots[row[3]]
        for row in spool._conn.execute(
            "EXPLAIN " + insert.split(" VALUES ")[0] + " VALUES " + params, [None] * 30
        )
        if row[1] == "OpenWrite"
    }
    assert written == {
        "records",
        "sqlite_autoindex_records_1",  # id
        "ux_records_idempotency",  # (tenant, device_id, seq)
        "ix_records_open_rid",
        "ix_records_inflight",  # partial: state = 1, so an insert adds no entry
        "ix_records_acked",
        "ix_records_dead",
    }, written


def test_loaded_records_have_the_stored_types(spool: Spool) -> None:
    results, _ = spool.append_batch(
        [
            rec(1, seq=7),
            NewRecord("id-2", "t", "d2", None, b"{}", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
        ]
    )
    spool.record_failure([results[0].rid], "boom")
    one, two = spool.load([r.rid for r in results])
    assert (one.rid, one.id, one.tenant, one.device_id, one.seq) == (
        results[0].rid,
        "id-d1-1",
        "t",
        "d1",
        7,
    )
    assert one.state is State.ENQUEUED and one.attempts == 1 and one.last_error == "boom"
    assert type(one.created_at) is float and type(one.body) is bytes and one.body == b"x" * 10
    assert two.seq is None and two.last_error is None and two.traceparent is not None
    assert two.device_key == ("t", "d2")
    assert msgspec.structs.replace(one, attempts=5).attempts == 5 and one.attempts == 1


def test_rids_are_never_reused_after_pruning(spool: Spool) -> None:
    first, _ = spool.append_batch([rec(1), rec(2)])
    spool.mark_acked([r.rid for r in first])
    assert spool.prune_oldest_acked(10) == 2
    again, totals = spool.append_batch([rec(3)])
    assert again[0].rid > first[1].rid and totals.records == 1


def test_duplicate_check_uses_the_idempotency_index(spool: Spool) -> None:
    statements: list[str] = []
    spool._conn.set_trace_callback(statements.append)
    spool.append_batch([rec(1, seq=1), rec(2, seq=2)])
    spool._conn.set_trace_callback(None)
    lookup = next(s for s in statements if s.startswith("WITH k("))
    plan = spool._conn.execute("EXPLAIN QUERY PLAN " + lookup).fetchall()
    assert any("ux_records_idempotency" in str(row) for row in plan), plan
    assert not any(row[3] == "SCAN r" for row in plan), plan


def test_state_changes_look_rids_up_by_primary_key(spool: Spool) -> None:
    # With ten or more rids SQLite's planner preferred an index on (state, updated_at)
    # for the state term and walked every record in that state: a cost that grew with
    # the backlog. The marks must stay lookups by primary key, whatever indexes exist.
    results, _ = spool.append_batch([rec(i) for i in range(600)])
    rids = [r.rid for r in results]
    statements: list[str] = []
    spool._conn.set_trace_callback(statements.append)
    spool.mark_inflight(rids[:500])
    spool.requeue(rids[:500])
    spool.note_error(rids[:500], "down")
    spool.record_failure(rids[:500], "boom")
    spool.mark_acked(rids[:250])
    spool.mark_dead(rids[250:500], "bad")
    spool._conn.set_trace_callback(None)
    updates = [s for s in statements if s.startswith("UPDATE records")]
    assert len(updates) == 6
    for update in updates:
        plan = spool._conn.execute("EXPLAIN QUERY PLAN " + update).fetchall()
        assert [row[3] for row in plan] == ["SEARCH records USING INTEGER PRIMARY KEY (rowid=?)"], (
            update[:60],
            plan,
        )
    states = [r.state for r in spool.load(rids)]
    assert states == [State.ACKED] * 250 + [State.DEAD] * 250 + [State.ENQUEUED] * 100


def test_spool_survives_reopen(tmp_path: Path) -> None:
    first = Spool(tmp_path / "s.db")
    first.append_batch([rec(1, seq=1)])
    first.close()
    second = Spool(tmp_path / "s.db")
    assert second.totals().records == 1
    assert second.append_batch([rec(2, seq=1)])[0][0].duplicate


def test_a_new_spool_has_small_pages_and_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    new = Spool(tmp_path / "new.db")
    assert new._conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 2048
    new.close()
    # A spool an earlier version created (SQLite's default, 4 KiB pages), with a record.
    old = tmp_path / "old.db"
    first = Spool(old)
    first.close()
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA page_size=4096")
    conn.execute("VACUUM")  # how a file's page size changes: rewritten whole
    conn.close()
    first = Spool(old)
    assert first._conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    first.append_batch([rec(1, seq=1)])
    first.close()
    reopened = Spool(old)  # opening never rewrites a spool in another page size
    assert reopened._conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert reopened.append_batch([rec(2, seq=1), rec(3, seq=2)])[0][0].duplicate
    assert reopened.totals().records == 2


async def test_group_commit_shares_transactions_and_answers_after_commit(spool: Spool) -> None:
    committed: list[int] = []
    writer = SpoolWriter(spool, max_batch=256, on_commit=lambda r, res, t: committed.append(len(r)))
    writer.start()
    # The acknowledgement promise rests on the writer's own connection: FULL sync.
    assert writer._appends is not None
    assert writer._appends._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    results = await asyncio.gather(*(writer.append(rec(i, seq=i)) for i in range(1000)))
    await writer.stop()
    assert len({r.rid for r in results}) == 1000
    assert sum(committed) == 1000
    assert len(committed) < 1000, "concurrent appends must share transactions"
    assert max(committed) <= 256
    # Every answered record is readable from another connection: it was committed.
    other = Spool(spool.path)
    assert other.totals().records == 1000


async def test_append_failure_reaches_every_sender(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    writer = SpoolWriter(spool)
    writer.start()
    spool._conn.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON records"
        " BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
    )
    outcomes = await asyncio.gather(
        *(writer.append(rec(i)) for i in range(20)), return_exceptions=True
    )
    await writer.stop()
    assert all(isinstance(o, SpoolError) and "disk says no" in str(o) for o in outcomes)
    assert spool.totals().records == 0


def test_write_transaction_restores_the_busy_handler_and_rolls_back_on_any_error(
    spool: Spool,
) -> None:
    (result,), _ = spool.append_batch([rec(1, seq=1)])
    assert spool.mark_inflight([result.rid]) == 1
    # Off only while the write lock was being taken; back on once the transaction ended.
    assert spool._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    with pytest.raises(RuntimeError), spool._lock, spool._write("test") as cur:
        cur.execute("UPDATE records SET state=2 WHERE rid=?", (result.rid,))
        raise RuntimeError("not an SQLite error")
    assert not spool._conn.in_transaction
    assert spool.load([result.rid])[0].state is State.INFLIGHT
    assert spool._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000


def _wal_frames_after_a_reader(path: Path, restart_bytes: int) -> int:
    """WAL frames after: writes, a reader on an old snapshot across a checkpoint
    round (it finishes 0.2 s later), then one more write."""
    Spool(path).close()  # schema, WAL mode
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("CREATE TABLE filler (x BLOB)")
    for _ in range(50):
        writer.execute("INSERT INTO filler VALUES (?)", (bytes(4000),))
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM filler").fetchone()  # holds its snapshot
    for _ in range(50):
        writer.execute("INSERT INTO filler VALUES (?)", (bytes(4000),))
    done = threading.Timer(0.2, lambda: reader.execute("COMMIT"))
    done.start()
    checkpointer = sqlite3.connect(path, isolation_level=None, timeout=10)
    checkpoint_round(checkpointer, restart_bytes)
    done.join()
    writer.execute("INSERT INTO filler VALUES (?)", (bytes(4000),))
    frames = int(checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    for conn in (writer, reader, checkpointer):
        conn.close()
    return frames


def test_a_large_wal_starts_over_although_readers_overlapped_the_checkpoint(
    tmp_path: Path,
) -> None:
    # PASSIVE alone cannot copy past the reader's snapshot, so the next write still
    # appends to the long WAL (under steady ingest + forwarder load it grew to 1 GB).
    assert _wal_frames_after_a_reader(tmp_path / "a.db", restart_bytes=1 << 40) > 100
    # The RESTART round waits for the reader, and the next write starts the WAL over.
    assert _wal_frames_after_a_reader(tmp_path / "b.db", restart_bytes=64 << 10) <= 5


def test_wal_generation_counts_each_time_the_wal_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    assert wal_generation(path) == -1  # no WAL yet
    Spool(path).close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("CREATE TABLE filler (x BLOB)")
    checkpointer = sqlite3.connect(path, isolation_level=None)
    seen = []
    for _ in range(3):
        writer.execute("INSERT INTO filler VALUES (?)", (bytes(4000),))
        seen.append(wal_generation(path))
        checkpoint_round(checkpointer)  # all copied: the next write starts the WAL over
    assert seen == [seen[0], seen[0] + 1, seen[0] + 2]
    for conn in (writer, checkpointer):
        conn.close()


def test_checkpoint_pace_quickens_while_writes_keep_coming() -> None:
    pace = CheckpointPace(idle_s=1.0, busy_s=0.1, busy_frames=256)
    assert pace.after(0, 10) == 1.0  # little written: rounds a second apart
    assert pace.after(0, 400) == 0.1  # 390 new frames
    assert pace.after(0, 500) == 1.0  # 100 new frames
    # The WAL started over since (checkpointed in full): all its frames are new,
    # although there are fewer of them than last round.
    assert pace.after(1, 300) == 0.1
    # ... again, with about as many frames as before: still new, still busy.
    assert pace.after(2, 310) == 0.1
    assert pace.after(2, 320) == 1.0
    assert pace.after_error() == 1.0


def _generations_in(path: Path, pace: CheckpointPace, seconds: float) -> int:
    """How often the WAL started over while rows were written for ``seconds`` with
    a background checkpointer at ``pace`` (each round that copies everything lets
    the next write start it over)."""
    spool = Spool(path)
    stop = spool.checkpoint_in_background(pace)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")  # only the checkpointer's rounds
    writer.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)")
    first = wal_generation(path)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # ~40 frames per 10 ms
        writer.execute("BEGIN")
        for _ in range(40):
            writer.execute("INSERT INTO filler VALUES (?)", (bytes(3000),))
        writer.execute("COMMIT")
        time.sleep(0.01)
    generations = wal_generation(path) - first
    stop.set()
    writer.close()
    spool.close()
    return generations


def test_the_background_checkpointer_keeps_the_pace_it_is_given(tmp_path: Path) -> None:
    idle_only = CheckpointPace(idle_s=0.5, busy_s=0.05, busy_frames=1 << 30)
    quickened = CheckpointPace(idle_s=0.5, busy_s=0.05, busy_frames=64)
    # A round every 0.5 s: at most 4 in 2 s. Quickened: the first round at 0.5 s,
    # then one every ~0.05 s, ~30 in all; a loaded CI machine managed 7 in the
    # 0.7 s after the first round, so at least 10 in these 1.5 s.
    assert _generations_in(tmp_path / "idle.db", idle_only, 2.0) <= 4
    assert _generations_in(tmp_path / "busy.db", quickened, 2.0) >= 10


# The schema of spool files written before `pending` (user_version 2), as it was.
_V2_SCHEMA = """
CREATE TABLE records (
    rid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL,
    device_id TEXT NOT NULL, seq INTEGER, state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, acked_at REAL, traceparent TEXT, size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE UNIQUE INDEX ux_records_idempotency
    ON records(tenant, device_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX ix_records_pending ON records(tenant, device_id, rid) WHERE state IN (0, 1);
CREATE INDEX ix_records_pending_rid ON records(rid) WHERE state IN (0, 1);
CREATE INDEX ix_records_state ON records(state, updated_at);
CREATE TABLE totals (
    one INTEGER PRIMARY KEY CHECK (one = 1), records INTEGER NOT NULL,
    bytes INTEGER NOT NULL, next_rid INTEGER NOT NULL DEFAULT 1
);
INSERT INTO totals VALUES (1, 4, 40, 5);
CREATE TRIGGER tr_records_delete AFTER DELETE ON records BEGIN
    UPDATE totals SET records = records - 1, bytes = bytes - OLD.size WHERE one = 1;
END;
PRAGMA user_version = 2;
"""


def test_a_version_2_spool_is_migrated_with_its_records_in_their_states(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_V2_SCHEMA)
    for rid, state in enumerate((0, 1, 2, 3), start=1):
        conn.execute(
            "INSERT INTO records(rid, id, tenant, device_id, seq, state, created_at, updated_at,"
            " size, body) VALUES (?, ?, 't', 'd1', ?, ?, 1.0, 1.0, 10, x'00')",
            (rid, f"id-{rid}", rid, state),
        )
    conn.commit()
    conn.close()
    spool = Spool(path)
    assert spool._conn.execute("PRAGMA user_version").fetchone()[0] == 4
    indexes = {r[0] for r in spool._conn.execute("SELECT name FROM sqlite_master")}
    assert not indexes & {
        "ix_records_pending",
        "ix_records_pending_rid",
        "ix_records_state",
        "ix_records_open",
    }
    assert {"ix_records_open_rid", "ix_records_acked"} <= indexes
    assert spool.counts_by_state() == {"Enqueued": 1, "InFlight": 1, "Acked": 1, "Dead": 1}
    assert spool.pending_rids_between(0, 10, 100) == [1, 2]
    assert spool.oldest_pending_created_at() == 1.0
    # Opening it again (another process of the gateway) finds nothing left to do.
    assert Spool(path).counts_by_state() == spool.counts_by_state()
    results, _ = spool.append_batch([rec(5, seq=5)])
    assert results[0].rid == 5 and not results[0].duplicate


def test_a_version_3_spool_loses_its_per_device_open_index_and_nothing_else(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v3.db"
    spool = Spool(path)
    results, _ = spool.append_batch([rec(i, device=f"d{i % 2}", seq=i) for i in range(4)])
    spool.mark_acked([results[0].rid])
    # As schema 3 left it: the (tenant, device_id, rid) index of open records.
    spool._conn.execute(
        "CREATE INDEX ix_records_open ON records(tenant, device_id, rid) WHERE pending = 1"
    )
    spool._conn.execute("PRAGMA user_version=3")
    spool.close()
    reopened = Spool(path)
    assert reopened._conn.execute("PRAGMA user_version").fetchone()[0] == 4
    names = {r[0] for r in reopened._conn.execute("SELECT name FROM sqlite_master")}
    assert "ix_records_open" not in names and "ux_records_idempotency" in names
    assert reopened.pending_rids_between(0, 100, 100) == [r.rid for r in results[1:]]
    again, _ = reopened.append_batch([rec(9, device="d1", seq=3)])
    assert again[0].duplicate and again[0].rid == results[3].rid


def test_pending_follows_the_state_through_every_change(spool: Spool) -> None:
    from iotgw_core.spool import DeadLetterFilter

    results, _ = spool.append_batch([rec(i, device=f"d{i % 3}", seq=i) for i in range(12)])
    rids = [r.rid for r in results]
    spool.mark_inflight(rids[:10])
    spool.requeue(rids[:2])
    spool.note_error(rids[2:4], "down")
    spool.record_failure(rids[4:5], "boom")
    spool.mark_acked(rids[5:8])
    spool.mark_dead(rids[8:10], "bad")
    spool.replay(DeadLetterFilter(ids=[results[8].id]))
    rows = spool._conn.execute("SELECT state, pending FROM records").fetchall()
    assert all(pending == (1 if state in (0, 1) else 0) for state, pending in rows), rows
    by_state = dict(
        spool._conn.execute("SELECT state, count(*) FROM records GROUP BY state").fetchall()
    )
    assert spool.counts_by_state() == {label.label: by_state.get(label.value, 0) for label in State}
    assert spool.counts_by_state()["Dead"] == 1 and spool.counts_by_state()["Acked"] == 3
    open_rids = spool.pending_rids_between(0, 100, 100)
    assert open_rids == sorted(rids[:5] + rids[8:9] + rids[10:])


def test_an_inflight_mark_writes_no_index_of_open_records(spool: Spool) -> None:
    # InFlight is the one state change every record makes that does not end it: it
    # must not rewrite the (tenant, device, rid) and rid indexes of open records.
    results, _ = spool.append_batch([rec(i, seq=i) for i in range(3)])
    statements: list[str] = []
    spool._conn.set_trace_callback(statements.append)
    spool.mark_inflight([r.rid for r in results])
    spool._conn.set_trace_callback(None)
    (update,) = [s for s in statements if s.startswith("UPDATE records")]
    roots = dict(spool._conn.execute("SELECT rootpage, name FROM sqlite_master WHERE rootpage"))
    written = {
        roots[row[3]] for row in spool._conn.execute("EXPLAIN " + update) if row[1] == "OpenWrite"
    }
    assert "records" in written and "ix_records_inflight" in written
    assert not written & {
        "ix_records_open_rid",
        "ux_records_idempotency",
        "sqlite_autoindex_records_1",
    }, written
