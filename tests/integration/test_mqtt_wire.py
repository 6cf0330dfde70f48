"""The ingest's MQTT v5 connection against a real mosquitto (edge config)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from iotgw_ingest_mqtt import wire

from tests.support.mosquitto import DevicePublisher, MosquittoBroker

pytestmark = [pytest.mark.integration]

TOPIC = "v1/+/+/+/+"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    running = MosquittoBroker(tmp_path / "broker", cert_listener=False).start()
    yield running
    running.stop()


async def ingest_connection(
    broker: MosquittoBroker, *, client_id: str = "wire-test", **kw: int
) -> wire.Connection:
    return await wire.open_connection(
        "127.0.0.1",
        broker.local_port,
        client_id=client_id,
        username="iotgw-ingest",
        password=broker.ingest_password,
        session_expiry_s=kw.pop("session_expiry_s", 600),
        **kw,
    )


async def wait_pending(conn: wire.Connection, n: int, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while conn.pending < n:
        assert loop.time() < deadline, f"{conn.pending} of {n} messages arrived"
        await asyncio.sleep(0.02)


async def test_a_wrong_password_is_refused_with_the_brokers_reason(
    broker: MosquittoBroker,
) -> None:
    with pytest.raises(wire.MqttError, match=r"connection refused: reason 0x8[67]"):
        await wire.open_connection(
            "127.0.0.1",
            broker.local_port,
            client_id="wire-test",
            username="iotgw-ingest",
            password="not-the-password",
        )


async def test_unacknowledged_messages_come_again_on_the_next_connection_only_those(
    broker: MosquittoBroker,
) -> None:
    conn = await ingest_connection(broker)
    assert await conn.subscribe(TOPIC, qos=1) == 1
    pub = DevicePublisher(broker, broker.add_device("d-wire")).start()
    try:
        for seq in range(4):
            pub.publish(seq)
        assert pub.wait_acked(4)
        await wait_pending(conn, 4)
        first = await conn.batch(10)
        assert [m.payload for m in first] == [
            b'{"seq": %d, "metrics": {"n": %d}}' % (i, i) for i in range(4)
        ]
        conn.ack([m.packet_id for m in first[:2]])  # the last two are never acknowledged
        await asyncio.sleep(0.2)  # let the PUBACKs reach the broker before leaving
        await conn.close()

        again = await ingest_connection(broker)
        try:
            assert again.session_present  # subscription and queue kept by the broker
            await wait_pending(again, 2)
            redelivered = await again.batch(10)
            assert [m.payload for m in redelivered] == [m.payload for m in first[2:]]
            again.ack([m.packet_id for m in redelivered])
            await asyncio.sleep(0.2)
        finally:
            await again.close()

        third = await ingest_connection(broker)
        try:
            pub.publish(99)
            await wait_pending(third, 1)
            assert [m.payload for m in await third.batch(10)] == [
                b'{"seq": 99, "metrics": {"n": 99}}'
            ]
        finally:
            await third.close()
    finally:
        pub.stop()


async def test_receive_maximum_holds_the_broker_back_until_acknowledged(
    broker: MosquittoBroker,
) -> None:
    conn = await ingest_connection(broker, receive_maximum=5)
    await conn.subscribe(TOPIC, qos=1)
    pub = DevicePublisher(broker, broker.add_device("d-window")).start()
    try:
        for seq in range(12):
            pub.publish(seq)
        assert pub.wait_acked(12)
        await wait_pending(conn, 5)
        await asyncio.sleep(0.5)
        assert conn.pending == 5  # no more than Receive Maximum unacknowledged
        taken: list[wire.Publish] = []
        while len(taken) < 12:  # each acknowledgement lets more come
            batch = await asyncio.wait_for(conn.batch(100), 10)
            conn.ack([m.packet_id for m in batch])
            taken += batch
        assert sorted(m.payload for m in taken) == sorted(
            b'{"seq": %d, "metrics": {"n": %d}}' % (i, i) for i in range(12)
        )
    finally:
        pub.stop()
        await conn.close()


async def test_a_second_connection_with_the_same_client_id_ends_the_first(
    broker: MosquittoBroker,
) -> None:
    first = await ingest_connection(broker)
    second = await ingest_connection(broker)
    try:
        # MQTT 5 says DISCONNECT 0x8e (session taken over); mosquitto 2.0.11 just closes.
        with pytest.raises(wire.MqttError, match=r"reason 0x8e|connection closed"):
            await asyncio.wait_for(first.batch(1), 10)
        assert second.open
    finally:
        await first.close()
        await second.close()


async def test_a_broker_that_stops_answering_ends_the_connection_after_the_keepalive(
    broker: MosquittoBroker,
) -> None:
    conn = await ingest_connection(broker, keepalive_s=1)
    os.kill(broker.managed.pid, signal.SIGSTOP)
    try:
        with pytest.raises(wire.MqttError, match="nothing from the broker"):
            await asyncio.wait_for(conn.batch(1), 10)
    finally:
        os.kill(broker.managed.pid, signal.SIGCONT)
        await conn.close()


async def test_nothing_listening_is_an_mqtt_error(broker: MosquittoBroker) -> None:
    broker.stop()
    with pytest.raises(wire.MqttError, match="cannot connect"):
        await ingest_connection(broker)
