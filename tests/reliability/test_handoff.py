"""The stream hand-off after the commit: several commits share one XADD, senders do not wait."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from iotgw_core.ingest import IngestPipeline
from iotgw_core.settings import CommonSettings, load_settings
from iotgw_core.stream import StreamEntry, connect
from redis.asyncio import Redis

from tests.reliability.test_sink_failures import ingest, until

pytestmark = pytest.mark.reliability


async def _stream_rids(client: Redis, key: str) -> list[list[int]]:
    """The rids each stream entry names, entry by entry."""
    raw = await client.xrange(key)
    return [[e.rid for e in StreamEntry.unpack(entry_id, fields)] for entry_id, fields in raw]


@contextlib.asynccontextmanager
async def _running(env: dict[str, str], linger: str) -> AsyncIterator[IngestPipeline]:
    pipeline = IngestPipeline(
        load_settings(CommonSettings, {**env, "IOTGW_HANDOFF_LINGER_S": linger}), source="http"
    )
    await pipeline.start()
    try:
        yield pipeline
    finally:
        await pipeline.stop()


async def _handed_off(pipeline: IngestPipeline) -> None:
    await until(lambda: pipeline._handoff._unfinished_tasks == 0, 10, "the hand-off done")


async def test_commits_within_the_linger_go_out_in_one_entry(
    gateway_env: dict[str, str],
) -> None:
    async with _running(gateway_env, "1.0") as pipeline:
        results = [await ingest(pipeline, "dev", range(n, n + 2)) for n in (0, 2, 4)]
        # Three commits answered (durable) while their hand-off still waits.
        assert await pipeline.stream.length() == 0
        await _handed_off(pipeline)
        got = await _stream_rids(pipeline.redis, pipeline.stream.key)
        assert got == [[r.rid for batch in results for r in batch]]  # one entry, commit order


async def test_without_a_linger_each_commit_is_handed_off_on_its_own(
    gateway_env: dict[str, str],
) -> None:
    async with _running(gateway_env, "0") as pipeline:
        results = []
        for n in (0, 2, 4):
            results.append(await ingest(pipeline, "dev", range(n, n + 2)))
            await _handed_off(pipeline)
        got = await _stream_rids(pipeline.redis, pipeline.stream.key)
        assert got == [[r.rid for r in batch] for batch in results]


async def test_stopping_hands_off_what_lingers(gateway_env: dict[str, str]) -> None:
    env = {**gateway_env, "IOTGW_HANDOFF_LINGER_S": "1.0"}
    pipeline = IngestPipeline(load_settings(CommonSettings, env), source="http")
    await pipeline.start()
    results = await ingest(pipeline, "dev", range(3))
    await pipeline.stop()  # waits for the hand-off queue, linger included
    client = connect(env["IOTGW_REDIS_URL"])
    try:
        got = await _stream_rids(client, env["IOTGW_STREAM_KEY"])
        assert [rid for entry in got for rid in entry] == [r.rid for r in results]
    finally:
        await client.aclose()
