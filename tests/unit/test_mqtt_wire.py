"""The ingest's MQTT v5 packet reading: split reads, properties, malformed packets."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from iotgw_ingest_mqtt import wire


def publish_packet(
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    packet_id: int = 7,
    props: bytes = b"",
    dup: bool = False,
) -> bytes:
    raw_topic = topic.encode()
    body = struct.pack("!H", len(raw_topic)) + raw_topic
    if qos:
        body += struct.pack("!H", packet_id)
    body += wire.encode_varint(len(props)) + props + payload
    first = 0x30 | (qos << 1) | (0x08 if dup else 0)
    return bytes([first]) + wire.encode_varint(len(body)) + body


def user_property(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return b"\x26" + struct.pack("!H", len(n)) + n + struct.pack("!H", len(v)) + v


class FakeTransport(asyncio.Transport):
    """Records writes; the connection under test is fed through data_received."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def connection(max_queued: int = 1000) -> tuple[wire.Connection, FakeTransport]:
    conn = wire.Connection(max_queued=max_queued)
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport


async def test_packets_split_at_every_byte_are_read_whole() -> None:
    big = b"x" * 300  # a two-byte remaining length
    stream = (
        publish_packet("v1/t/s/d/telemetry", b'{"seq":1}', packet_id=1)
        + b"\xd0\x00"  # PINGRESP in between
        + publish_packet("v1/t/s/d/health", big, qos=0)
        + publish_packet(
            "v1/t/s/d/telemetry",
            b"{}",
            packet_id=65535,
            props=user_property("seq", "5") + user_property("seq", "6") + b"\x01\x01",
        )
    )
    for cut in range(1, len(stream)):
        conn, transport = await connection()
        conn.data_received(stream[:cut])
        conn.data_received(stream[cut:])
        got = await conn.batch(10)
        assert [(m.topic, m.qos, m.packet_id) for m in got] == [
            ("v1/t/s/d/telemetry", 1, 1),
            ("v1/t/s/d/health", 0, 0),
            ("v1/t/s/d/telemetry", 1, 65535),
        ], cut
        assert got[0].payload == b'{"seq":1}' and got[1].payload == big
        assert got[2].user_properties == [("seq", "5"), ("seq", "6")]
        assert conn.open and not transport.closed


async def test_pubacks_of_a_batch_go_out_in_one_write_and_never_after_the_end() -> None:
    conn, transport = await connection()
    conn.ack([1, 258])
    assert bytes(transport.written) == b"\x40\x02\x00\x01\x40\x02\x01\x02"
    conn.connection_lost(ConnectionResetError())
    conn.ack([3])  # a dead connection's packet ids mean nothing on any other one
    assert bytes(transport.written) == b"\x40\x02\x00\x01\x40\x02\x01\x02"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x36\x05\x00\x01a\x00\x01", "QoS 3"),
        (b"\x32\x06\x00\x05abcde", "string overruns"),
        (b"\x32\x08\x00\x01a\x00\x01\x05\x26\x00", "properties overrun the packet"),
        (b"\x30\x05\x00\x01a\x01\x7f", "unknown property"),
        (b"\x30\x07\x00\x01a\x03\x23\x00\x01", "topic alias"),
        (b"\x30\x04\x00\x02\xff\xfe", "not UTF-8"),
        (b"\x30\xff\xff\xff\xff\x01", "longer than 4 bytes"),
        (b"\x90\x03\x00\x01\x00", "unexpected packet type 9"),  # SUBACK nobody asked for
        (b"\xe0\x01\x8e", "reason 0x8e"),  # DISCONNECT: session taken over
    ],
)
async def test_a_malformed_or_unexpected_packet_ends_the_connection(data: bytes, why: str) -> None:
    conn, transport = await connection()
    conn.data_received(data)
    assert transport.closed and not conn.open
    with pytest.raises(wire.MqttError, match=why):
        await conn.batch(10)


async def test_messages_before_the_end_are_still_handed_out_then_the_error() -> None:
    conn, _ = await connection()
    conn.data_received(publish_packet("v1/t/s/d/telemetry", b"{}") + b"\xe0\x00")
    assert [m.packet_id for m in await conn.batch(10)] == [7]
    with pytest.raises(wire.MqttError, match="disconnected by the broker"):
        await conn.batch(10)


async def test_reading_pauses_while_the_queue_is_full_and_resumes_once_taken() -> None:
    conn, transport = await connection(max_queued=4)
    conn.data_received(b"".join(publish_packet("a/b", b"x", qos=0) for _ in range(5)))
    assert transport.paused and conn.pending == 5
    assert len(await conn.batch(2)) == 2
    assert transport.paused  # 3 left: not under half of 4 yet
    assert len(await conn.batch(2)) == 2
    assert not transport.paused and conn.pending == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=64))
def test_arbitrary_bytes_end_in_messages_or_mqtterror_never_anything_else(
    data: bytes, cut: int
) -> None:
    async def feed() -> None:
        conn, _ = await connection()
        conn.data_received(data[:cut])
        conn.data_received(data[cut:])
        while conn.pending:
            await conn.batch(100)
        if not conn.open:
            with pytest.raises(wire.MqttError):
                await conn.batch(1)

    asyncio.run(feed())


def test_connect_packet_layout() -> None:
    packet = wire.connect_packet(
        client_id="ingest-1",
        username="iotgw-ingest",
        password="secret",
        keepalive_s=30,
        clean_start=False,
        session_expiry_s=604800,
        receive_maximum=1000,
    )
    assert packet[0] == 0x10
    body = packet[2:]
    assert packet[1] == len(body)
    assert body[:7] == b"\x00\x04MQTT\x05"
    assert body[7] == 0xC0  # username + password, clean start off
    assert body[8:10] == b"\x00\x1e"
    assert body[10:19] == b"\x08\x11\x00\x09\x3a\x80\x21\x03\xe8"
    assert body[19:] == b"\x00\x08ingest-1\x00\x0ciotgw-ingest\x00\x06secret"
