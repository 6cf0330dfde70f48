"""The stream hand-off after the commit: several commits share one XADD, senders do not wait.

Both hand-offs: the spool writer process's (the default writer, tracing off) and
the event loop's (here with the writer thread; also the path with tracing on).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import pytest
from iotgw_core.ingest import IngestPipeline
from iotgw_core.settings import CommonSettings, load_settings
from iotgw_core.sink import MemorySink
from iotgw_core.spool import State
from iotgw_core.spool_process import ProcessSpoolWriter
from iotgw_core.stream import StreamEntry, connect
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from tests.reliability.test_sink_failures import ingest, pipeline_and_forwarder, until
from tests.support.procs import free_port

pytestmark = pytest.mark.reliability
both_writers = pytest.mark.parametrize("writer", ["process", "thread"])


async def _stream_rids(client: Redis, key: str) -> list[list[int]]:
    """The rids each stream entry names, entry by entry."""
    raw = await client.xrange(key)
    return [[e.rid for e in StreamEntry.unpack(entry_id, fields)] for entry_id, fields in raw]


def _settings(env: dict[str, str], writer: str, linger: str) -> CommonSettings:
    overrides = {"IOTGW_HANDOFF_LINGER_S": linger, "IOTGW_SPOOL_WRITER": writer}
    return load_settings(CommonSettings, {**env, **overrides})


@contextlib.asynccontextmanager
async def _running(env: dict[str, str], writer: str, linger: str) -> AsyncIterator[IngestPipeline]:
    pipeline = IngestPipeline(_settings(env, writer, linger), source="http")
    await pipeline.start()
    try:
        yield pipeline
    finally:
        await pipeline.stop()


async def _handed_off(pipeline: IngestPipeline, records: int) -> None:
    """Wait until the stream names ``records`` records."""

    async def named() -> int:
        return sum(len(e) for e in await _stream_rids(pipeline.redis, pipeline.stream.key))

    count = 0
    for _ in range(200):
        count = await named()
        if count >= records:
            break
        await asyncio.sleep(0.05)
    assert count == records, f"the stream names {count} records, not {records}"


@both_writers
async def test_commits_within_the_linger_go_out_in_one_entry(
    gateway_env: dict[str, str], writer: str
) -> None:
    async with _running(gateway_env, writer, "1.0") as pipeline:
        assert pipeline.seals_in_writer is (writer == "process")
        results = [await ingest(pipeline, "dev", range(n, n + 2)) for n in (0, 2, 4)]
        # Three commits answered (durable) while their hand-off still waits.
        assert await pipeline.stream.length() == 0
        await _handed_off(pipeline, 6)
        got = await _stream_rids(pipeline.redis, pipeline.stream.key)
        assert got == [[r.rid for batch in results for r in batch]]  # one entry, commit order


@both_writers
async def test_without_a_linger_each_commit_is_handed_off_on_its_own(
    gateway_env: dict[str, str], writer: str
) -> None:
    async with _running(gateway_env, writer, "0") as pipeline:
        results = []
        for n in (0, 2, 4):
            results.append(await ingest(pipeline, "dev", range(n, n + 2)))
            await _handed_off(pipeline, n + 2)
        got = await _stream_rids(pipeline.redis, pipeline.stream.key)
        assert got == [[r.rid for r in batch] for batch in results]


@both_writers
async def test_stopping_hands_off_what_lingers(gateway_env: dict[str, str], writer: str) -> None:
    pipeline = IngestPipeline(_settings(gateway_env, writer, "1.0"), source="http")
    await pipeline.start()
    results = await ingest(pipeline, "dev", range(3))
    await pipeline.stop()  # waits for the hand-off queue, linger included
    client = connect(gateway_env["IOTGW_REDIS_URL"])
    try:
        got = await _stream_rids(client, gateway_env["IOTGW_STREAM_KEY"])
        assert [rid for entry in got for rid in entry] == [r.rid for r in results]
    finally:
        await client.aclose()


@both_writers
async def test_a_failed_hand_off_is_counted_and_the_records_stay_enqueued(
    gateway_env: dict[str, str], writer: str
) -> None:
    """Redis unreachable: senders are still answered (the records are durable), the
    failure is counted and the records wait, Enqueued, for the reconciler."""

    def failures() -> float:
        return REGISTRY.get_sample_value("gateway_stream_handoff_failures_total") or 0.0

    before = failures()
    env = {**gateway_env, "IOTGW_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    async with _running(env, writer, "0") as pipeline:
        results = await ingest(pipeline, "dev", range(3))
        # The writer process reports a failed hand-off with its next reply.
        for seq in range(3, 40):
            if failures() - before >= 3:
                break
            await ingest(pipeline, "dev", range(seq, seq + 1))
            await asyncio.sleep(0.1)
        assert failures() - before >= 3
        for res in results:
            stored = pipeline.spool.get(res.id)
            assert stored is not None and stored.state is State.ENQUEUED


async def test_a_writer_killed_before_its_hand_off_loses_no_acknowledged_record(
    gateway_env: dict[str, str],
) -> None:
    """kill -9 of the writer process while its hand-off lingers: the acknowledged
    records are in the spool but never reached the stream; the forwarder's
    reconciler finds them and they are delivered."""
    sink = MemorySink()
    async with pipeline_and_forwarder(gateway_env, sink, handoff_linger_s="1.0") as (pipeline, _):
        assert pipeline.seals_in_writer
        results = await ingest(pipeline, "dev", range(3))  # acknowledged: committed
        assert isinstance(pipeline.writer, ProcessSpoolWriter) and pipeline.writer.pid
        os.kill(pipeline.writer.pid, signal.SIGKILL)  # its hand-off still lingers
        await asyncio.sleep(1.5)
        assert await pipeline.stream.length() == 0  # the hand-off died with it
        ids = {r.id for r in results}
        await until(lambda: ids <= {r.id for r in sink.delivered}, 30, "reconciled and delivered")
        # The next append starts a new writer, and its hand-off works.
        more = await ingest(pipeline, "dev", range(3, 5))
        more_ids = {r.id for r in more}
        await until(lambda: more_ids <= {r.id for r in sink.delivered}, 30, "delivered")
