"""Shutdown ends even when a background loop's Redis command lets a cancellation pass.

Under Python 3.11, redis-py sends each command through ``asyncio.wait_for``, which
drops a cancellation that arrives as the send finishes (CPython gh-86296): the
loop gets the reply and goes round again. One ``cancel()`` then a wait hung the
HTTP ingest's shutdown for good; these tests stop loops that are busy in
Redis commands, on the real redis-server, over and over.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from iotgw_core.ingest import IngestPipeline
from iotgw_core.settings import CommonSettings, load_settings
from iotgw_core.sink import MemorySink
from iotgw_core.stream import connect
from iotgw_core.tasks import cancel_all
from iotgw_forwarder.consumer import Forwarder
from iotgw_forwarder.settings import ForwarderSettings

from tests.support.procs import RedisServer


async def _commands(client: Any, key: str) -> None:
    while True:
        await client.exists(key)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio.wait_for keeps cancellations")
async def test_one_cancel_can_be_lost_in_a_redis_command_and_cancel_all_ends_the_loop(
    redis_server: RedisServer, stream_key: str
) -> None:
    client = connect(redis_server.url)
    try:
        await client.ping()
        lost_at = []
        for offset in range(20):  # loop iterations between the start and the cancel
            task = asyncio.create_task(_commands(client, stream_key))
            for _ in range(offset):
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=0.1)
            if not done:
                lost_at.append(offset)
            assert await cancel_all([task], timeout_s=5.0) == []
            assert task.done()
        # The hazard itself: without it this test would prove nothing.
        assert lost_at, "no cancellation was lost: redis-py no longer sends through wait_for?"
    finally:
        await client.aclose()


async def test_the_ingest_pipeline_stops_while_its_budget_loop_is_in_redis_commands(
    gateway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def busy_drain_check(self: IngestPipeline) -> None:
        # The budget loop's Redis read, made long so that the stop lands in it.
        for _ in range(100_000):
            await self.redis.exists(self.drain_key)

    monkeypatch.setattr(IngestPipeline, "_follow_operator_drain", busy_drain_check)
    settings = load_settings(CommonSettings, gateway_env)
    for round_ in range(5):  # one cancel() alone was lost in about half of the rounds
        pipeline = IngestPipeline(settings, source="http")
        await pipeline.start()
        await asyncio.sleep(1.1 + round_ * 0.013)  # past the loop's first 1 s sleep
        await asyncio.wait_for(pipeline.stop(), 15)
        assert all(task.done() for task in pipeline._tasks)


async def test_the_forwarder_stops_when_a_background_loop_loses_its_cancellation(
    gateway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The forwarder's loops are seldom in a command (the first test shows the loss
    # with real commands); here the pause loop loses its first cancellation always.
    lost: list[int] = []

    async def pause_loop_losing_a_cancel(self: Forwarder) -> None:
        while True:
            try:
                await self.stream.client.exists(self.pause_key)
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost.append(1)

    monkeypatch.setattr(Forwarder, "_pause_loop", pause_loop_losing_a_cancel)
    forwarder = Forwarder(load_settings(ForwarderSettings, gateway_env), MemorySink())
    run = asyncio.create_task(forwarder.run())
    await asyncio.sleep(0.3)
    forwarder.stop()
    await asyncio.wait_for(asyncio.shield(run), 15)
    assert lost == [1]
