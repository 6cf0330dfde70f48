"""The Sink contract, run against the file sink and its in-memory twin."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from iotgw_core.sink import FileSink, MemorySink, Outcome, Sink, SinkUnavailable
from iotgw_core.spool import State, StoredRecord

from tests.support.stack import outbox_records

pytestmark = pytest.mark.unit


def stored(n: int, device: str = "d1", size: int = 40) -> StoredRecord:
    body = (b'{"id":"r%d","device_id":"%s","pad":"' % (n, device.encode())) + b"x" * size + b'"}'
    return StoredRecord(
        rid=n,
        id=f"r{n}",
        tenant="t",
        device_id=device,
        seq=n,
        state=State.INFLIGHT,
        attempts=0,
        last_error=None,
        created_at=time.time(),
        traceparent=None,
        body=body,
    )


@pytest.fixture(params=["file", "memory"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Sink:
    if request.param == "file":
        return FileSink(tmp_path / "outbox", max_record_bytes=1000)
    return MemorySink(max_record_bytes=1000)


async def test_contract_delivers_in_order_and_rejects_oversize(sink: Sink) -> None:
    await sink.start()
    batch = [stored(1), stored(2, "d2"), stored(3, size=2000), stored(4)]
    answers = await sink.deliver(batch)
    assert [a.outcome for a in answers] == [
        Outcome.DELIVERED,
        Outcome.DELIVERED,
        Outcome.REJECT,
        Outcome.DELIVERED,
    ]
    assert answers[2].error and "too_large" in answers[2].error
    assert sink.status()["status"] == "ok"
    await sink.close()
    assert isinstance(sink, Sink)


async def test_file_sink_lines_are_the_envelopes_fsynced_in_order(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "outbox")
    await sink.start()
    await sink.deliver([stored(i) for i in range(1, 6)])
    await sink.close()
    assert [r["id"] for r in outbox_records(tmp_path / "outbox")] == [f"r{i}" for i in range(1, 6)]


async def test_file_sink_rotates_by_size(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "outbox", max_file_bytes=1024)
    await sink.start()
    for i in range(40):
        await sink.deliver([stored(i)])
    await sink.close()
    files = sorted((tmp_path / "outbox").glob("outbox-*.jsonl"))
    assert len(files) > 2
    assert all(f.stat().st_size < 1024 + 200 for f in files)
    assert [r["id"] for r in outbox_records(tmp_path / "outbox")] == [f"r{i}" for i in range(40)]


async def test_file_sink_repairs_a_torn_last_line(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    sink = FileSink(outbox)
    await sink.start()
    await sink.deliver([stored(1)])
    await sink.close()
    path = next(outbox.glob("outbox-*.jsonl"))
    with path.open("ab") as fh:
        fh.write(b'{"id":"r2","device_id":"d1","pa')  # a crash in the middle of a write
    sink = FileSink(outbox)
    await sink.start()
    await sink.deliver([stored(2)])
    await sink.close()
    assert [r["id"] for r in outbox_records(outbox)] == ["r1", "r2"]


async def test_file_sink_unwritable_directory_is_unavailable_then_recovers(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    sink = FileSink(outbox)
    await sink.start()
    shutil.rmtree(outbox)
    outbox.write_text("not a directory")  # the disk refuses: ENOTDIR
    with pytest.raises(SinkUnavailable):
        await sink.deliver([stored(1)])
    assert sink.status()["status"] == "failing"
    os.unlink(outbox)
    answers = await sink.deliver([stored(1)])
    assert answers[0].outcome is Outcome.DELIVERED
    assert [r["id"] for r in outbox_records(outbox)] == ["r1"]


async def test_memory_twin_skips_a_device_after_its_failure() -> None:
    sink = MemorySink(poison={"r2"})
    answers = await sink.deliver([stored(1), stored(2), stored(3), stored(4, "d2")])
    assert [a.outcome for a in answers] == [
        Outcome.DELIVERED,
        Outcome.RETRY,
        Outcome.SKIPPED,
        Outcome.DELIVERED,
    ]
    assert [r.id for r in sink.delivered] == ["r1", "r4"]


def test_skip_after_failure_skips_only_later_records_of_the_failed_device() -> None:
    from iotgw_core.sink import DELIVERED, SKIPPED, Delivery, skip_after_failure

    records = [stored(1, "a"), stored(2, "b"), stored(3, "a"), stored(4, "b"), stored(5, "a")]
    retry = Delivery(Outcome.RETRY, "boom")
    reject = Delivery(Outcome.REJECT, "bad")
    everything = [DELIVERED] * 5
    assert skip_after_failure(records, everything) == everything
    assert skip_after_failure(records, [DELIVERED, retry, DELIVERED, DELIVERED, DELIVERED]) == [
        DELIVERED,
        retry,
        DELIVERED,
        SKIPPED,
        DELIVERED,
    ]
    # A rejected record does not hold its device back; a sink's own SKIPPED does.
    assert skip_after_failure(records, [reject, SKIPPED, DELIVERED, DELIVERED, retry]) == [
        reject,
        SKIPPED,
        DELIVERED,
        SKIPPED,
        retry,
    ]
    with pytest.raises(ValueError):
        skip_after_failure(records, everything[:4])
