"""A sink that fails: retried with backoff, order kept per device, poison records end Dead."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from iotgw_core.ingest import IngestPipeline
from iotgw_core.settings import CommonSettings, load_settings
from iotgw_core.sink import Delivery, MemorySink
from iotgw_core.spool import AppendResult, NewRecord, Spool, State, StoredRecord
from iotgw_core.stream import StreamEntry
from iotgw_core.validation import parse_reading
from iotgw_forwarder.consumer import Forwarder
from iotgw_forwarder.settings import ForwarderSettings

from tests.reliability.load import send_readings
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.reliability


@contextlib.asynccontextmanager
async def pipeline_and_forwarder(
    env: dict[str, str], sink: MemorySink, **overrides: str
) -> AsyncIterator[tuple[IngestPipeline, Forwarder]]:
    env = {**env, **{f"IOTGW_{k.upper()}": v for k, v in overrides.items()}}
    pipeline = IngestPipeline(load_settings(CommonSettings, env), source="http")
    await pipeline.start()
    forwarder = Forwarder(load_settings(ForwarderSettings, env), sink)
    task = asyncio.create_task(forwarder.run())
    try:
        yield pipeline, forwarder
    finally:
        forwarder.stop()
        await asyncio.wait_for(task, 15)
        await pipeline.stop()


async def ingest(pipeline: IngestPipeline, device: str, seqs: range) -> list[AppendResult]:
    records = [
        pipeline.build(parse_reading(b'{"seq":%d,"metrics":{"t":1}}' % s), device_id=device)
        for s in seqs
    ]
    return await pipeline.submit(records)


async def until(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_transient_failures_are_retried_and_counted(gateway_env: dict[str, str]) -> None:
    sink = MemorySink(retry_for=3)
    async with pipeline_and_forwarder(gateway_env, sink) as (pipeline, _):
        results = await ingest(pipeline, "dev", range(5))
        await until(lambda: len(sink.delivered) == 5, 30, "delivery after retries")
    assert [r.seq for r in sink.delivered] == [0, 1, 2, 3, 4]
    spool = Spool(gateway_env["IOTGW_SPOOL_PATH"])
    stored = spool.load([r.rid for r in results])
    assert all(r.state is State.ACKED for r in stored)
    # The first record went through all three failed calls, then the one that worked.
    assert stored[0].attempts == 4 and all(1 <= r.attempts <= 4 for r in stored)
    assert sink.calls >= 4


async def test_poison_record_ends_dead_with_its_reason_and_its_device_keeps_order(
    gateway_env: dict[str, str],
) -> None:
    sink = MemorySink()
    async with pipeline_and_forwarder(gateway_env, sink, retry_max_attempts="4") as (pipeline, _):
        # The forwarder sees A's records only after the poison is set.
        a = await ingest(pipeline, "dev-a", range(6))
        sink.poison.add(a[2].id)
        b = await ingest(pipeline, "dev-b", range(3))
        await until(lambda: len(sink.delivered) == 8, 30, "all but the poison delivered")
    delivered_a = [r.seq for r in sink.delivered if r.device_id == "dev-a"]
    assert delivered_a == [0, 1, 3, 4, 5], "order of a device is kept around its dead record"
    assert [r.seq for r in sink.delivered if r.device_id == "dev-b"] == [0, 1, 2]
    dead = Spool(gateway_env["IOTGW_SPOOL_PATH"]).get(a[2].id)
    assert dead is not None and dead.state is State.DEAD and dead.attempts == 4
    assert dead.last_error == "attempts exhausted (4): poison record: sink refuses it"
    assert b[0].state is State.ENQUEUED


async def test_a_failing_device_does_not_hold_up_the_others(gateway_env: dict[str, str]) -> None:
    sink = MemorySink()
    # Full jitter draws each backoff from [0, 1 s]: with 3 attempts two short draws
    # (about one run in eight) ended dev-slow Dead before dev-fast was through. With
    # 10, nine draws would all have to be short: dev-slow is still backing off.
    async with pipeline_and_forwarder(
        gateway_env, sink, retry_base_s="1", retry_cap_s="1", retry_max_attempts="10"
    ) as (pipeline, _):
        a = await ingest(pipeline, "dev-slow", range(1))
        sink.poison.add(a[0].id)
        await asyncio.sleep(0.3)
        await ingest(pipeline, "dev-fast", range(20))
        await until(
            lambda: sum(r.device_id == "dev-fast" for r in sink.delivered) == 20, 10, "dev-fast"
        )
        # dev-slow is still backing off (failed at least once) while dev-fast is done.
        slow = Spool(gateway_env["IOTGW_SPOOL_PATH"]).get(a[0].id)
        assert slow is not None and slow.state is not State.DEAD and slow.attempts >= 1


def test_file_sink_down_for_a_while_then_everything_delivered(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    stack = Stack(gateway_env, tmp_path).start()
    try:
        # The sink's first file, not only its directory: the sink's start makes the
        # directory again on its way to that file, and would undo the rmtree below.
        wait_until(lambda: any(stack.outbox.glob("outbox-*.jsonl")), 20, "outbox file created")
        shutil.rmtree(stack.outbox)
        stack.outbox.write_text("the disk is gone")  # writes fail: the sink is unavailable
        result = asyncio.run(send_readings(stack.base_url, 500, device="dev-s", time_limit_s=60))
        assert len(result.acked) == 500
        time.sleep(2.0)
        spool = Spool(gateway_env["IOTGW_SPOOL_PATH"])
        counts = spool.counts_by_state()
        assert counts["Acked"] == 0 and counts["Dead"] == 0
        stack.outbox.unlink()  # the disk is back
        wait_until(lambda: len(stack.records()) >= 500, 60, "backlog delivered")
        assert sorted(r["seq"] for r in stack.records()) == sorted(result.acked)
        # Waiting for an unreachable sink spends no attempt: nothing became Dead.
        assert spool.counts_by_state()["Dead"] == 0
        assert "unavailable" in stack.forwarder.log_text()
    finally:
        stack.stop()


def test_record_over_the_sink_limit_is_dead_at_once_with_its_reason(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**gateway_env, "IOTGW_SINK_MAX_RECORD_BYTES": "600"}
    stack = Stack(env, tmp_path).start()
    try:
        with stack.client() as client:
            big = client.post("/v1/ingest/dev", json={"seq": 1, "payload": {"x": "y" * 800}})
            small = client.post("/v1/ingest/dev", json={"seq": 2, "metrics": {"t": 1}})
        assert big.status_code == small.status_code == 202
        stack.wait_outbox(1)
        spool = Spool(env["IOTGW_SPOOL_PATH"])
        wait_until(lambda: spool.counts_by_state()["Dead"] == 1, 20, "the big one Dead")
        dead = spool.get(big.json()["id"])
        assert dead is not None and dead.state is State.DEAD and dead.attempts == 1
        assert dead.last_error is not None and dead.last_error.startswith("record_too_large")
        assert [r["seq"] for r in stack.records()] == [2]
    finally:
        stack.stop()


async def test_a_device_new_to_the_forwarder_gets_its_older_records_first(
    gateway_env: dict[str, str],
) -> None:
    # dev's first five records never reached the stream (Redis lost them); the
    # reconciler is kept out of it, so only the forwarder's own check can find them.
    env = {**gateway_env, "IOTGW_RECONCILE_GRACE_S": "3600"}
    spool = Spool(env["IOTGW_SPOOL_PATH"])
    spool.append_batch([NewRecord(f"lost-{i}", "t", "dev", i, b"{}") for i in range(5)])
    handed, _ = spool.append_batch(
        [NewRecord("handed", "t", "dev", 5, b"{}"), NewRecord("other", "t", "dev-2", 0, b"{}")]
    )
    sink = MemorySink()
    forwarder = Forwarder(load_settings(ForwarderSettings, env), sink)
    devices = ["dev", "dev-2"]
    await forwarder.stream.add_many(
        [StreamEntry(r.rid, r.id, "t", d, None) for r, d in zip(handed, devices, strict=True)]
    )
    task = asyncio.create_task(forwarder.run())
    try:
        await until(lambda: len(sink.delivered) == 7, 30, "every record of both devices")
    finally:
        forwarder.stop()
        await asyncio.wait_for(task, 15)
    assert [r.id for r in sink.delivered if r.device_id == "dev"] == [
        *(f"lost-{i}" for i in range(5)),
        "handed",
    ]
    assert spool.counts_by_state()["Acked"] == 7


async def steps_until(forwarder: Forwarder, done: object, what: str, timeout_s: float = 20) -> None:
    """Drive the forwarder round by round (no background loops: no reconciler)."""
    deadline = time.monotonic() + timeout_s
    rounds = 0
    while rounds < 1000 and time.monotonic() < deadline:
        if done():  # type: ignore[operator]
            return
        await forwarder.step()
        rounds += 1
        await asyncio.sleep(0.01)
    raise AssertionError(f"not after {rounds} rounds: {what}")


async def test_a_device_with_a_record_waiting_still_gets_its_lost_records_in_order(
    gateway_env: dict[str, str],
) -> None:
    # dev's first record waits in its lane (the sink was down) when its next two are
    # committed without stream entries (Redis lost them) and a fourth is handed over.
    # The lane exists, so the device is not new to the forwarder; the lost two must
    # still go before the fourth, found by the forwarder's own check (no reconciler).
    env = {**gateway_env, "IOTGW_RECONCILE_GRACE_S": "3600"}
    spool = Spool(env["IOTGW_SPOOL_PATH"])
    sink = MemorySink(unavailable_for=1)
    forwarder = Forwarder(load_settings(ForwarderSettings, env), sink)

    async def commit(ids: list[str], *, handed: bool) -> None:
        results, _ = spool.append_batch([NewRecord(i, "t", "dev", None, b"{}") for i in ids])
        if handed:
            await forwarder.stream.add_many(
                [StreamEntry(r.rid, r.id, "t", "dev", None) for r in results]
            )

    try:
        await forwarder.stream.ensure_group()
        await commit(["first"], handed=True)
        await steps_until(forwarder, lambda: sink.calls == 1, "the sink's first (failed) call")
        assert not sink.delivered and [p.record.id for p in forwarder.lanes[("t", "dev")]] == [
            "first"
        ]
        await commit(["lost-1", "lost-2"], handed=False)
        await commit(["fourth"], handed=True)
        await steps_until(forwarder, lambda: len(sink.delivered) == 4, "all four delivered")
    finally:
        await forwarder.stream.client.aclose()
    assert [r.id for r in sink.delivered] == ["first", "lost-1", "lost-2", "fourth"]


async def test_more_lost_records_than_memory_holds_go_in_order_a_part_at_a_time(
    gateway_env: dict[str, str],
) -> None:
    # 30 records of three devices lost their stream entries; then one more of each is
    # handed over. Memory holds 6 (+ a sink call of 4): the lost ones are taken a part
    # at a time, oldest first, and no device's newer record overtakes its older ones.
    env = {
        **gateway_env,
        "IOTGW_RECONCILE_GRACE_S": "3600",
        "IOTGW_MAX_PENDING_RECORDS": "6",
        "IOTGW_FORWARD_BATCH": "4",
    }
    spool = Spool(env["IOTGW_SPOOL_PATH"])
    devices = ["a", "b", "c"]
    lost, _ = spool.append_batch(
        [NewRecord(f"lost-{i}", "t", devices[i % 3], i, b"{}") for i in range(30)]
    )
    handed, _ = spool.append_batch([NewRecord(f"new-{d}", "t", d, 100, b"{}") for d in devices])
    sink = MemorySink()
    forwarder = Forwarder(load_settings(ForwarderSettings, env), sink)
    held: list[int] = []
    deliver = sink.deliver

    async def watching_deliver(records: Sequence[StoredRecord]) -> list[Delivery]:
        held.append(len(forwarder.items))
        return await deliver(records)

    sink.deliver = watching_deliver  # type: ignore[method-assign]
    try:
        await forwarder.stream.add_many(
            [StreamEntry(r.rid, r.id, "t", d, None) for r, d in zip(handed, devices, strict=True)]
        )
        await steps_until(forwarder, lambda: len(sink.delivered) == 33, "every record")
    finally:
        await forwarder.stream.client.aclose()
    for d in devices:
        ids = [r.id for r in sink.delivered if r.device_id == d]
        want = [f"lost-{i}" for i in range(30) if devices[i % 3] == d] + [f"new-{d}"]
        assert ids == want, d
    assert max(held) <= 6 + 4, held
    assert len(held) >= 33 // 4  # a sink call of at most 4 each time
    assert spool.counts_by_state()["Acked"] == 33
    assert lost[0].rid < handed[0].rid


async def test_what_the_stream_holds_goes_in_one_read_and_one_sink_call(
    gateway_env: dict[str, str],
) -> None:
    # The linger comes after a small sink call, not between two reads before it.
    env = {**gateway_env, "IOTGW_FORWARD_LINGER_S": "0.01"}
    spool = Spool(env["IOTGW_SPOOL_PATH"])
    sink = MemorySink()
    forwarder = Forwarder(load_settings(ForwarderSettings, env), sink)
    await forwarder.stream.ensure_group()
    await forwarder.step()  # this consumer's own pending entries first: none
    for part in range(3):  # three commits, three stream entries
        results, _ = spool.append_batch(
            [NewRecord(f"r{part}-{i}", "t", f"dev-{i % 2}", part * 10 + i, b"{}") for i in range(5)]
        )
        await forwarder.stream.add_many(
            [StreamEntry(r.rid, r.id, "t", f"dev-{i % 2}", None) for i, r in enumerate(results)]
        )
    reads = 0
    read = forwarder.stream.read

    async def counting_read(*args: object, **kwargs: object) -> list[StreamEntry]:
        nonlocal reads
        reads += 1
        return await read(*args, **kwargs)  # type: ignore[arg-type]

    forwarder.stream.read = counting_read  # type: ignore[method-assign]
    try:
        await forwarder.step()
    finally:
        await forwarder.stream.client.aclose()
    assert (reads, sink.calls, len(sink.delivered)) == (1, 1, 15)
    assert spool.counts_by_state()["Acked"] == 15
    assert await forwarder.stream.length() == 0  # every entry acknowledged and deleted
