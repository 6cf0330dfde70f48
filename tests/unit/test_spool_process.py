"""Group commit in a child process (ProcessSpoolWriter) on a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from iotgw_core import spool_process
from iotgw_core.spool import NewRecord, Spool, SpoolError, Totals
from iotgw_core.spool_process import ProcessSpoolWriter


def rec(n: int, seq: int | None = None) -> NewRecord:
    return NewRecord(id=f"id-{n}", tenant="t", device_id="d1", seq=seq, body=b'{"n":%d}' % n)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "s.db", busy_timeout_ms=2000)


@contextlib.asynccontextmanager
async def running(spool: Spool, **options: Any) -> AsyncIterator[ProcessSpoolWriter]:
    """A started writer, stopped (its child gone) on the way out."""
    writer = ProcessSpoolWriter(spool, **options)
    writer.start()
    try:
        yield writer
    finally:
        await writer.stop()


async def test_appends_share_transactions_and_answer_after_the_commit(spool: Spool) -> None:
    commits: list[tuple[int, Totals]] = []

    def hook(records: Sequence[NewRecord], results: object, totals: Totals) -> None:
        commits.append((len(records), totals))

    async with running(spool, max_batch=256, on_commit=hook) as writer:
        results = await asyncio.gather(*(writer.append(rec(i, seq=i)) for i in range(1000)))
        again = await writer.append_many([rec(5000, seq=3), rec(5001, seq=1000)])
    assert [r.rid for r in results] == list(range(1, 1001))  # commit order is append order
    assert [r.id for r in results] == [f"id-{i}" for i in range(1000)]
    assert not any(r.duplicate for r in results)
    assert again[0].duplicate and again[0].id == "id-3"  # the stored original's id
    assert not again[1].duplicate
    assert sum(n for n, _ in commits) == 1002
    assert len(commits) < 1000, "concurrent appends must share transactions"
    assert max(n for n, _ in commits) <= 256
    assert commits[-1][1].records == 1001
    # Every answered record is readable from another connection: it was committed.
    assert Spool(spool.path).totals().records == 1001
    assert writer.pid is None  # the child exited with stop()


def take_write_lock(spool: Spool) -> sqlite3.Connection:
    """Another connection holding the spool's write lock until it rolls back."""
    blocker = sqlite3.connect(spool.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


async def test_a_failed_transaction_fails_its_senders_and_the_child_goes_on(
    spool: Spool,
) -> None:
    async with running(spool) as writer:
        assert (await writer.append(rec(0, seq=0))).rid == 1
        blocker = take_write_lock(spool)  # held longer than the busy timeout
        outcomes = await asyncio.gather(
            *(writer.append(rec(i, seq=i)) for i in range(1, 6)), return_exceptions=True
        )
        blocker.execute("ROLLBACK")
        assert all(isinstance(o, SpoolError) for o in outcomes), outcomes
        pid = writer.pid
        assert (await writer.append(rec(6, seq=6))).rid == 2
        assert writer.pid == pid  # the same child
    assert Spool(spool.path).totals().records == 2


async def test_a_killed_child_fails_what_waits_and_the_next_append_starts_another(
    spool: Spool,
) -> None:
    async with running(spool) as writer:
        await writer.append(rec(0, seq=0))
        blocker = take_write_lock(spool)  # the child waits on the lock with these
        waiting = [asyncio.ensure_future(writer.append(rec(i, seq=i))) for i in range(1, 4)]
        await asyncio.sleep(0.3)
        first = writer.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        blocker.execute("ROLLBACK")
        assert all(isinstance(o, SpoolError) and "exited" in str(o) for o in outcomes), outcomes
        with pytest.raises(SpoolError, match="restarting"):  # not in a tight loop
            await writer.append(rec(4, seq=4))
        await asyncio.sleep(0.6)
        result = await writer.append(rec(1, seq=1))  # the sender's retry
        assert not result.duplicate  # the killed transaction left nothing behind
        assert writer.pid not in (None, first)
    assert Spool(spool.path).totals().records == 2


def test_the_child_exits_when_the_parent_end_closes(spool: Spool) -> None:
    """A parent killed with -9 closes its end: the child must not linger."""
    parent, child = socket.socketpair()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iotgw_core.spool_process",
            str(spool.path),
            "FULL",
            "2000",
            "64",
            str(child.fileno()),
        ],
        pass_fds=(child.fileno(),),
    )
    child.close()
    try:
        parent.sendall(spool_process._frame(spool_process._encode([rec(1, seq=1)])))
        header = parent.recv(4, socket.MSG_WAITALL)
        (n,) = spool_process._HEADER.unpack(header)
        reply = spool_process._decode_reply(parent.recv(n, socket.MSG_WAITALL))
        assert reply.error is None and reply.frames == 1 and reply.results[0].rid == 1
        parent.close()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert Spool(spool.path).totals().records == 1


def test_split_frames_keeps_an_incomplete_tail() -> None:
    whole = spool_process._frame(b"abc") + spool_process._frame(b"")
    buf = bytearray(whole + spool_process._frame(b"defg")[:5])
    assert spool_process._split_frames(buf) == [b"abc", b""]
    assert bytes(buf) == spool_process._frame(b"defg")[:5]
