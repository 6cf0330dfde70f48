"""The record stream's acknowledgement on a real redis-server."""

from __future__ import annotations

import pytest
from iotgw_core.stream import RecordStream, StreamEntry, connect
from redis.exceptions import ResponseError

from tests.support.procs import RedisServer

pytestmark = pytest.mark.integration


async def test_ack_deletes_the_entries_and_tells_waiting_requests_in_one_go(
    redis_server: RedisServer, stream_key: str
) -> None:
    client = connect(redis_server.url)
    stream = RecordStream(client, stream_key, "g")
    await stream.ensure_group()
    await stream.add_many([StreamEntry(1, "r1", "t", "d"), StreamEntry(2, "r2", "t", "d")])
    await stream.add_many([StreamEntry(3, "r3", "t", "d")])
    entries = await stream.read("c", 10, None)
    pubsub = client.pubsub()
    await pubsub.subscribe(stream.acked_channel)
    assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"  # type: ignore[index]
    try:
        await stream.ack([entries[0].entry_id], acked_records=["r1", "r2"])
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None and message["data"] == b"r1,r2"
        assert await stream.length() == 1
        assert (await client.xpending(stream_key, "g"))["pending"] == 1
        # Nothing to acknowledge: the word still goes out.
        await stream.ack([], acked_records=["r3"])
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None and message["data"] == b"r3"
        # A failed XACK is not hidden by the publish next to it.
        await client.delete(stream_key)
        await client.set(stream_key, "not a stream")
        with pytest.raises(ResponseError):
            await stream.ack([entries[2].entry_id], acked_records=["r3"])
    finally:
        await client.delete(stream_key)
        await pubsub.aclose()
        await client.aclose()
