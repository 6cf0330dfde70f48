"""Ack mode sink: the HTTP ingest's subscription to the forwarder's acknowledgements.

The forwarder publishes the ids of the records its sink acknowledged on the
stream's acked channel; ingest processes in ack mode sink hold one subscription
to it and answer 200 when their record's id comes by. These tests run a real
redis-server and the real pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from iotgw_core.ingest import IngestPipeline
from iotgw_core.settings import CommonSettings, load_settings
from iotgw_core.spool import AppendResult, State
from iotgw_core.stream import connect
from redis.exceptions import RedisError

from tests.support.procs import RedisServer, free_port


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Without the cyclic collector, a subscription nobody closed stays open."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _listener_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "the subscription to" in r.getMessage()
    ]


async def _subscribers(pipeline: IngestPipeline) -> int:
    [(_, count)] = await pipeline.redis.pubsub_numsub(pipeline.stream.acked_channel)
    return int(count)


async def _until_subscribed(pipeline: IngestPipeline) -> None:
    for _ in range(100):
        # The client's pooled connection fails once after a Redis restart.
        with contextlib.suppress(RedisError):
            if await _subscribers(pipeline) >= 1:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the acked listener never subscribed")


async def test_foreign_messages_on_the_acked_channel_keep_one_subscription(
    gateway_env: dict[str, str], no_gc: None
) -> None:
    pipeline = IngestPipeline(
        load_settings(CommonSettings, gateway_env), source="http", ack_mode="sink"
    )
    await pipeline.start()
    try:
        await _until_subscribed(pipeline)
        channel = pipeline.stream.acked_channel
        result = AppendResult(
            id="0190-acked-after-junk", rid=1, duplicate=False, state=State.ENQUEUED
        )
        waiting = asyncio.create_task(pipeline.wait_delivered((result,), 5.0))
        await asyncio.sleep(0.05)
        for junk in (b"\xff\xfe", b"", b"not,an,id"):  # not ids of waiting records
            await pipeline.redis.publish(channel, junk)
        await pipeline.redis.publish(channel, f"0190-other,{result.id}".encode())
        # The acknowledgement right behind the junk reaches its waiter: the junk used
        # to end the subscription, and what came behind it was never read.
        assert await waiting is True
        await asyncio.sleep(1.5)  # past the listener's 1 s retry pause
        # Each junk message also used to leave its subscription open and open a new
        # one a second later: the old ones stayed subscribed, their messages queued
        # up on the server for nobody.
        assert await _subscribers(pipeline) == 1
    finally:
        await pipeline.stop()


async def test_an_error_in_the_subscription_closes_it_before_the_next(
    gateway_env: dict[str, str], no_gc: None, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = IngestPipeline(
        load_settings(CommonSettings, gateway_env), source="http", ack_mode="sink"
    )
    failures = 0

    def failing(data: bytes) -> None:
        nonlocal failures
        failures += 1
        raise RuntimeError("a fault while handling an acknowledgement")

    pipeline._delivered = failing  # type: ignore[method-assign]
    await pipeline.start()
    try:
        await _until_subscribed(pipeline)
        for round_ in range(3):
            await pipeline.redis.publish(pipeline.stream.acked_channel, b"0190-x")
            await asyncio.sleep(1.3)  # the listener's retry pause, then a new subscription
            assert failures == round_ + 1
            assert await _subscribers(pipeline) == 1
    finally:
        await pipeline.stop()
    # Each failure came after a subscription that worked: each is told, with its cause.
    warnings = _listener_warnings(caplog)
    assert len(warnings) == 3
    assert all("a fault while handling an acknowledgement" in w for w in warnings)
    # And the stop closes the last one.
    client = connect(gateway_env["IOTGW_REDIS_URL"])
    try:
        assert await client.pubsub_numsub(pipeline.stream.acked_channel) == [
            (pipeline.stream.acked_channel.encode(), 0)
        ]
    finally:
        await client.aclose()


async def test_the_subscription_comes_back_after_redis_restarts(
    gateway_env: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="iotgw_core.ingest")
    redis = RedisServer(tmp_path / "own-redis").start()  # restarted here: not the shared one
    pipeline = IngestPipeline(
        load_settings(CommonSettings, {**gateway_env, "IOTGW_REDIS_URL": redis.url}),
        source="http",
        ack_mode="sink",
    )
    await pipeline.start()
    try:
        await _until_subscribed(pipeline)
        redis.restart_empty()  # kill -9, then an empty server on the same port
        await _until_subscribed(pipeline)
        result = AppendResult(id="0190-after-restart", rid=1, duplicate=False, state=State.ENQUEUED)
        waiting = asyncio.create_task(pipeline.wait_delivered((result,), 5.0))
        await asyncio.sleep(0.05)
        await pipeline.redis.publish(pipeline.stream.acked_channel, result.id.encode())
        assert await waiting is True
        assert await _subscribers(pipeline) == 1
    finally:
        await pipeline.stop()
        redis.stop()
    assert len(_listener_warnings(caplog)) == 1
    assert any(
        "subscribed to" in r.getMessage() and "again" in r.getMessage() for r in caplog.records
    )


async def test_while_redis_stays_away_the_operator_is_told_once(
    gateway_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    pipeline = IngestPipeline(
        load_settings(CommonSettings, {**gateway_env, "IOTGW_REDIS_URL": closed}),
        source="http",
        ack_mode="sink",
    )
    await pipeline.start()
    try:
        await asyncio.sleep(3.5)  # three or four failed subscriptions, a second apart
    finally:
        await pipeline.stop()
    [warning] = _listener_warnings(caplog)
    assert "retrying every second" in warning
