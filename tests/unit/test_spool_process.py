"""Group commit in a child process (ProcessSpoolWriter) on a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from iotgw_core.spool_process import ProcessSpoolWriter, RawReading, ReadingOutcome
from iotgw_core.validation import ValidationFailure, parse_reading


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


async def test_an_append_to_an_idle_child_is_sent_in_the_append_itself(spool: Spool) -> None:
    """Not at the next loop iteration: an iteration that handles a burst of requests
    takes milliseconds, and the child would wait for it (docs/spool.md)."""
    async with running(spool) as writer:
        first = asyncio.ensure_future(writer.append(rec(1, seq=1)))
        await asyncio.sleep(0)  # `first` ran up to its wait for the commit
        assert not writer._out and not writer._flush_scheduled
        assert (await first).rid == 1


def raw(body: bytes, device: str = "d1", **fields: Any) -> RawReading:
    values: dict[str, Any] = {
        "device_id": device,
        "tenant": "t",
        "site": "s1",
        "traceparent": None,
        "received_ms": 1_700_000_000_123,
        "body": body,
    }
    return RawReading(**{**values, **fields})


async def test_raw_readings_are_validated_and_sealed_in_the_child(spool: Spool) -> None:
    tp = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    commits: list[tuple[list[Any], list[Any]]] = []

    def hook(stored: Sequence[Any], results: Sequence[Any], totals: Totals) -> None:
        commits.append((list(stored), list(results)))

    good = raw(
        b'{"seq":7,"metrics":{"temp_c":21.5,"reconnects":2},"tags":{"k":"v"}}', traceparent=tp
    )
    bad_bodies = [
        b'{"seq":8,"metrics":{"Bad":1}}',
        b'{"metrics":',
        b'{"metrics":{"t":NaN}}',
        b"[1]",
    ]
    async with running(spool, on_commit=hook, gateway_id="gw-9", source="http") as writer:
        answers = await writer.append_readings([good, *(raw(b) for b in bad_bodies)])
        record = await writer.append(rec(100, seq=1))  # records and readings share the child
        again = await writer.append_readings([raw(b'{"seq":7,"metrics":{"t":1}}')])
    outcome, result = answers[0]
    assert outcome == ReadingOutcome()
    assert result is not None and not result.duplicate and result.rid == 1
    for body, (bad, none) in zip(bad_bodies, answers[1:], strict=True):
        with pytest.raises(ValidationFailure) as expected:
            parse_reading(body)  # the child answers what validation on the loop would
        assert (bad.code, bad.message, none) == (expected.value.code, expected.value.message, None)
    assert record.rid == 2
    ((_, dup),) = again
    assert dup is not None and dup.duplicate and dup.id == result.id  # idempotent on seq
    stored = Spool(spool.path).get(result.id)
    assert stored is not None and stored.traceparent == tp
    env = json.loads(stored.body)
    assert env["id"] == result.id and env["gateway"]["id"] == "gw-9" and env["source"] == "http"
    assert (env["tenant"], env["site"], env["device_id"], env["seq"]) == ("t", "s1", "d1", 7)
    assert env["received_at"] == env["ts"] == "2023-11-14T22:13:20.123Z"
    assert env["trace"] == {"traceparent": tp} and env["metrics"]["temp_c"] == 21.5
    # The hook sees each stored reading beside its result; rejected ones are not there.
    first_stored, first_results = commits[0]
    assert [(s.device_id, r.rid) for s, r in zip(first_stored, first_results, strict=True)] == [
        ("d1", 1)
    ]
    assert Spool(spool.path).totals().records == 2


async def test_readings_that_all_break_a_rule_run_no_transaction(spool: Spool) -> None:
    commits: list[int] = []
    async with running(spool, on_commit=lambda s, r, t: commits.append(len(s))) as writer:
        answers = await writer.append_readings([raw(b"{}"), raw(b"not json")])
        assert [(o.code, r) for o, r in answers] == [
            ("empty_reading", None),
            ("invalid_json", None),
        ]
        # A reading the child cannot seal (here: an arrival time out of range) is an
        # internal error for that reading alone; the child and the others go on.
        broken, fine = await writer.append_readings(
            [raw(b'{"metrics":{"t":1}}', received_ms=10**18), raw(b'{"metrics":{"t":1}}')]
        )
        assert broken == (ReadingOutcome("internal_error", "internal error"), None)
        assert fine[1] is not None and fine[1].rid == 1
    assert commits == [1]


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
            "gw-1",
            "http",
        ],
        pass_fds=(child.fileno(),),
    )
    child.close()
    try:
        request = spool_process._Records([rec(1, seq=1)])
        parent.sendall(spool_process._frame(spool_process._encode(request)))
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


async def test_the_child_reports_its_counts_from_a_descriptor_past_1024(spool: Spool) -> None:
    # The child's socket keeps the number it had in the parent, which in a busy
    # service (a descriptor per connection) may be past select()'s limit of 1024.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"a hard limit of {hard} descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    reports: list[spool_process.Counts] = []
    try:
        async with running(spool, on_counts=reports.append) as writer:
            ((outcome, result),) = await writer.append_readings(
                [raw(b'{"seq":1,"metrics":{"t":1}}')]
            )
            assert outcome.code is None and result is not None
            # Idle after its commit, the child sends its counts on its own.
            for _ in range(100):
                if reports:
                    break
                await asyncio.sleep(0.05)
            assert writer.pid is not None  # the same child, alive
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(reports) == 1
    (device,) = reports[0].devices
    assert (device.device_id, device.records, device.duplicates) == ("d1", 1, 0)
    assert sum(reports[0].commit_hits.values()) == 1
