"""A lean MQTT v5 subscriber connection on asyncio: what the ingest needs, nothing more.

The ingest's only MQTT role is one persistent subscriber session that takes
QoS 0/1 PUBLISH packets in bulk and sends PUBACKs once their records are
committed. A general client (paho-mqtt under aiomqtt) pays per message for
things this role does not use: a Properties object per packet, a callback and a
queue hand-off per message, a socket read per packet. This connection is an
:class:`asyncio.Protocol`: each ``data_received`` parses every complete packet
of the chunk into a :class:`Publish` (user properties only when the packet has
properties) and the consumer takes them as batches; PUBACKs of a batch go out
in one write.

MQTT 5.0 (OASIS standard) as used here:

- CONNECT with clean start off, Session Expiry Interval and Receive Maximum
  (the broker keeps at most that many QoS 1 messages unacknowledged to us);
  no Topic Alias Maximum, so the broker sends full topic names; no Maximum
  Packet Size, so an oversized payload reaches the ingest and is quarantined
  with its reason instead of being dropped by the broker.
- SUBSCRIBE at QoS 1; the broker downgrades QoS 2 publishes to the
  subscription's QoS, so a QoS 2 PUBLISH is a protocol error here.
- Keepalive: a PINGREQ every half keepalive; the connection counts as dead
  when nothing has arrived for 1.5 keepalives (the broker's own rule for us).
- A DISCONNECT from the broker, a malformed packet or a lost socket ends the
  connection with :class:`MqttError`; messages not yet acknowledged are
  delivered again on the next connection of the session (their packet ids
  belong to this connection: never acknowledge them on another one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, cast

log = logging.getLogger(__name__)

CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
SUBSCRIBE: Final = 8
SUBACK: Final = 9
PINGREQ: Final = 12
PINGRESP: Final = 13
DISCONNECT: Final = 14

_PUBACK_HEADER: Final = 0x4002 << 16  # PUBACK, remaining length 2 (reason: success)
PINGREQ_PACKET: Final = b"\xc0\x00"
DISCONNECT_NORMAL: Final = b"\xe0\x00"  # reason 0x00: the session stays (expiry from CONNECT)

# Property identifiers (MQTT 5.0, 2.2.2.2) and how each is encoded.
_BYTE, _U16, _U32, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_PROPERTY_KINDS: Final = {
    0x01: _BYTE,  # payload format indicator
    0x02: _U32,  # message expiry interval
    0x03: _UTF8,  # content type
    0x08: _UTF8,  # response topic
    0x09: _BINARY,  # correlation data
    0x0B: _VARINT,  # subscription identifier
    0x11: _U32,  # session expiry interval
    0x12: _UTF8,  # assigned client identifier
    0x13: _U16,  # server keep alive
    0x15: _UTF8,  # authentication method
    0x16: _BINARY,  # authentication data
    0x1A: _UTF8,  # response information
    0x1C: _UTF8,  # server reference
    0x1F: _UTF8,  # reason string
    0x21: _U16,  # receive maximum
    0x22: _U16,  # topic alias maximum
    0x23: _U16,  # topic alias
    0x24: _BYTE,  # maximum QoS
    0x25: _BYTE,  # retain available
    0x26: _PAIR,  # user property
    0x27: _U32,  # maximum packet size
    0x28: _BYTE,  # wildcard subscription available
    0x29: _BYTE,  # subscription identifiers available
    0x2A: _BYTE,  # shared subscription available
}
_REASON_STRING: Final = 0x1F
_SERVER_KEEP_ALIVE: Final = 0x13
_TOPIC_ALIAS: Final = 0x23


class MqttError(Exception):
    """The connection failed or ended (refused, protocol error, lost, disconnected)."""


@dataclass(slots=True)
class Publish:
    """One PUBLISH as received: ``packet_id`` is 0 for QoS 0."""

    topic: str
    payload: bytes
    qos: int
    packet_id: int
    user_properties: list[tuple[str, str]] | None = None


def encode_varint(n: int) -> bytes:
    """MQTT variable byte integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + encode_varint(len(body)) + body


def connect_packet(
    *,
    client_id: str,
    username: str | None,
    password: str | None,
    keepalive_s: int,
    clean_start: bool,
    session_expiry_s: int,
    receive_maximum: int,
) -> bytes:
    """CONNECT (MQTT 5.0, 3.1)."""
    flags = (0x02 if clean_start else 0) | (0x80 if username else 0) | (0x40 if password else 0)
    props = (
        b"\x11" + struct.pack("!I", session_expiry_s) + b"\x21" + struct.pack("!H", receive_maximum)
    )
    body = (
        _utf8("MQTT")
        + bytes([5, flags])
        + struct.pack("!H", keepalive_s)
        + encode_varint(len(props))
        + props
        + _utf8(client_id)
    )
    if username:
        body += _utf8(username)
    if password:
        raw = password.encode()
        body += struct.pack("!H", len(raw)) + raw
    return _packet(CONNECT << 4, body)


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    """SUBSCRIBE of one filter (no local / retain handling off: plain subscriber)."""
    body = struct.pack("!H", packet_id) + b"\x00" + _utf8(topic_filter) + bytes([qos])
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def puback_packets(packet_ids: Iterable[int]) -> bytes:
    """PUBACKs (reason: success) for these packet ids, as one buffer."""
    ids = [_PUBACK_HEADER | pid for pid in packet_ids]  # 0x40 0x02 + the 16-bit id
    return struct.pack(f">{len(ids)}I", *ids)


def _varint(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    """Decode a variable byte integer at ``pos``; (value, next position)."""
    value = shift = 0
    for _ in range(4):
        if pos >= end:
            raise MqttError("malformed packet: truncated variable byte integer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise MqttError("malformed packet: variable byte integer longer than 4 bytes")


def _remaining_length(buf: bytes | bytearray, pos: int, size: int) -> tuple[int, int] | None:
    """A fixed header's remaining length at ``pos``; None while its bytes are incomplete."""
    if size - pos < 4 and all(b & 0x80 for b in buf[pos:size]):
        return None
    return _varint(buf, pos, size)


def parse_properties(
    buf: bytes | bytearray, pos: int, end: int
) -> tuple[dict[int, object], list[tuple[str, str]] | None]:
    """Properties between ``pos`` and ``end``: single ones by id, user properties in order."""
    single: dict[int, object] = {}
    pairs: list[tuple[str, str]] | None = None
    try:
        while pos < end:
            ident, pos = _varint(buf, pos, end)
            kind = _PROPERTY_KINDS.get(ident)
            if kind is None:
                raise MqttError(f"malformed packet: unknown property 0x{ident:02x}")
            if kind == _BYTE:
                single[ident] = buf[pos]
                pos += 1
            elif kind == _U16:
                single[ident] = int.from_bytes(buf[pos : pos + 2], "big")
                pos += 2
            elif kind == _U32:
                single[ident] = int.from_bytes(buf[pos : pos + 4], "big")
                pos += 4
            elif kind == _VARINT:
                single[ident], pos = _varint(buf, pos, end)
            elif kind == _PAIR:
                name, pos = _string(buf, pos, end)
                value, pos = _string(buf, pos, end)
                if pairs is None:
                    pairs = []
                pairs.append((name, value))
            else:
                n = int.from_bytes(buf[pos : pos + 2], "big")
                raw = bytes(buf[pos + 2 : pos + 2 + n])
                pos += 2 + n
                single[ident] = raw.decode() if kind == _UTF8 else raw
    except (IndexError, UnicodeDecodeError) as exc:
        raise MqttError(f"malformed properties: {exc}") from None
    if pos != end:
        raise MqttError("malformed packet: properties overrun their length")
    return single, pairs


def _string(buf: bytes | bytearray, pos: int, end: int) -> tuple[str, int]:
    n = int.from_bytes(buf[pos : pos + 2], "big")
    stop = pos + 2 + n
    if stop > end:
        raise MqttError("malformed packet: string overruns its packet")
    return bytes(buf[pos + 2 : stop]).decode(), stop


def parse_publish(flags: int, packet: bytes) -> Publish:
    """The variable header and payload of a PUBLISH (MQTT 5.0, 3.3)."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MqttError("malformed PUBLISH: QoS 3")
    end = len(packet)
    try:
        topic, pos = _string(packet, 0, end)
    except UnicodeDecodeError:
        raise MqttError("malformed PUBLISH: topic is not UTF-8") from None
    packet_id = 0
    if qos:
        packet_id = int.from_bytes(packet[pos : pos + 2], "big")
        pos += 2
    plen, pos = _varint(packet, pos, end)
    pairs = None
    if pos + plen > end:
        raise MqttError("malformed PUBLISH: properties overrun the packet")
    if plen:
        single, pairs = parse_properties(packet, pos, pos + plen)
        if _TOPIC_ALIAS in single:
            raise MqttError("PUBLISH with a topic alias: none was allowed in CONNECT")
        pos += plen
    if pos > end:
        raise MqttError("malformed PUBLISH: header overruns the packet")
    return Publish(topic, packet[pos:], qos, packet_id, pairs)


class Connection(asyncio.Protocol):
    """One MQTT v5 subscriber connection; open it with :func:`open_connection`."""

    def __init__(self, *, max_queued: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._queue: deque[Publish] = deque()
        self._max_queued = max_queued
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._replies: dict[int, asyncio.Future[bytes]] = {}
        self._error: MqttError | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self.last_received = time.monotonic()
        self.session_present = False
        self._debug = log.isEnabledFor(logging.DEBUG)  # a packet log, as paho's (slow)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        buf = self._buf
        buf += data
        pos, size = 0, len(buf)
        received = False
        try:
            while size - pos >= 2:
                first = buf[pos]
                if buf[pos + 1] & 0x80:
                    header = _remaining_length(buf, pos + 1, size)
                    if header is None:
                        break  # the rest of the length bytes are still on their way
                    length, start = header
                else:
                    length, start = buf[pos + 1], pos + 2
                end = start + length
                if end > size:
                    break
                kind = first >> 4
                if kind == PUBLISH:
                    message = parse_publish(first & 0x0F, bytes(buf[start:end]))
                    self._queue.append(message)
                    received = True
                    if self._debug:
                        log.debug(
                            "Received PUBLISH (d%d, q%d, r%d, m%d), %r, ... (%d bytes)",
                            (first >> 3) & 1,
                            message.qos,
                            first & 1,
                            message.packet_id,
                            message.topic,
                            len(message.payload),
                        )
                else:
                    self._control(kind, bytes(buf[start:end]))
                pos = end
        except MqttError as exc:
            self._fail(exc)
            return
        del buf[:pos]
        if received:
            if len(self._queue) >= self._max_queued and not self._reading_paused:
                # QoS 0 floods are not bounded by Receive Maximum: stop reading the socket.
                assert self._transport is not None
                self._transport.pause_reading()
                self._reading_paused = True
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(MqttError(f"connection lost: {exc}" if exc else "connection closed"))

    # -- the consumer's side ----------------------------------------------------------------

    async def batch(self, max_messages: int) -> list[Publish]:
        """Up to ``max_messages`` received messages; waits for the first one.

        Raises :class:`MqttError` once the connection has ended (messages received
        before that are still returned first: the caller may commit them, but their
        PUBACKs go nowhere and the broker redelivers them to the session).
        """
        while not self._queue:
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        queue = self._queue
        n = min(max_messages, len(queue))
        out = [queue.popleft() for _ in range(n)]
        if self._reading_paused and len(queue) < self._max_queued // 2:
            self._reading_paused = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
        return out

    def ack(self, packet_ids: Iterable[int]) -> None:
        """Send PUBACKs; on a connection that has ended this does nothing (see class doc)."""
        ids = list(packet_ids)
        if ids and self._error is None and self._transport is not None:
            self._transport.write(puback_packets(ids))
            if self._debug:
                for pid in ids:
                    log.debug("Sending PUBACK (Mid: %d)", pid)

    @property
    def pending(self) -> int:
        """Messages received and not yet taken by :meth:`batch`."""
        return len(self._queue)

    @property
    def open(self) -> bool:
        """True until the connection has ended."""
        return self._error is None

    async def subscribe(self, topic_filter: str, qos: int = 1, timeout_s: float = 10.0) -> int:
        """Subscribe one filter; the granted QoS (raises MqttError on refusal)."""
        reply = await self._request(SUBACK, subscribe_packet(1, topic_filter, qos), timeout_s)
        if len(reply) < 3:
            raise MqttError("malformed SUBACK")
        plen, pos = _varint(reply, 2, len(reply))
        codes = reply[pos + plen :]
        if len(codes) != 1:
            raise MqttError("malformed SUBACK: expected one reason code")
        if codes[0] >= 0x80:
            raise MqttError(f"subscription to {topic_filter!r} refused: reason 0x{codes[0]:02x}")
        return codes[0]

    async def close(self) -> None:
        """DISCONNECT (normal: the session stays on the broker) and close the socket."""
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(DISCONNECT_NORMAL)
            transport.close()
        self._fail(MqttError("closed"))

    # -- internals ---------------------------------------------------------------------------

    async def _handshake(self, connect: bytes, keepalive_s: int, timeout_s: float) -> None:
        reply = await self._request(CONNACK, connect, timeout_s)
        if len(reply) < 3:
            raise MqttError("malformed CONNACK")
        self.session_present = bool(reply[0] & 0x01)
        reason = reply[1]
        plen, pos = _varint(reply, 2, len(reply))
        props, _ = parse_properties(reply, pos, pos + plen)
        if reason >= 0x80:
            why = props.get(_REASON_STRING)
            raise MqttError(
                f"connection refused: reason 0x{reason:02x}" + (f" ({why})" if why else "")
            )
        server_keepalive = props.get(_SERVER_KEEP_ALIVE)
        if isinstance(server_keepalive, int):
            keepalive_s = server_keepalive
        if keepalive_s:
            self._keepalive_task = asyncio.create_task(self._keepalive(keepalive_s))

    async def _request(self, reply_kind: int, packet: bytes, timeout_s: float) -> bytes:
        if self._error is not None:
            raise self._error
        assert self._transport is not None
        future = self._loop.create_future()
        self._replies[reply_kind] = future
        self._transport.write(packet)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            self._fail(MqttError(f"no reply to packet type {packet[0] >> 4} in {timeout_s}s"))
            raise MqttError(f"no reply from the broker in {timeout_s}s") from None
        finally:
            self._replies.pop(reply_kind, None)

    async def _keepalive(self, keepalive_s: int) -> None:
        while self._error is None:
            await asyncio.sleep(keepalive_s / 2)
            if time.monotonic() - self.last_received > keepalive_s * 1.5:
                self._fail(MqttError(f"nothing from the broker for {keepalive_s * 1.5:.0f}s"))
                return
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(PINGREQ_PACKET)

    def _control(self, kind: int, body: bytes) -> None:
        if kind == PINGRESP:
            return
        if kind == DISCONNECT:
            reason = body[0] if body else 0
            why = ""
            if len(body) > 1:
                with contextlib.suppress(MqttError):
                    plen, pos = _varint(body, 1, len(body))
                    props, _ = parse_properties(body, pos, pos + plen)
                    why = str(props.get(_REASON_STRING) or "")
            raise MqttError(
                f"disconnected by the broker: reason 0x{reason:02x}" + (f" ({why})" if why else "")
            )
        future = self._replies.get(kind)
        if future is None or future.done():
            raise MqttError(f"unexpected packet type {kind}")
        future.set_result(body)

    def _fail(self, exc: MqttError) -> None:
        if self._error is not None:
            return
        self._error = exc
        for future in self._replies.values():
            if not future.done():
                future.set_exception(exc)
        if self._keepalive_task is not None and self._keepalive_task is not asyncio.current_task():
            self._keepalive_task.cancel()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def open_connection(
    host: str,
    port: int,
    *,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    keepalive_s: int = 30,
    clean_start: bool = False,
    session_expiry_s: int = 0,
    receive_maximum: int = 65535,
    max_queued: int = 10_000,
    timeout_s: float = 10.0,
) -> Connection:
    """Connect and finish the CONNECT/CONNACK handshake; raises MqttError on failure."""
    loop = asyncio.get_running_loop()
    try:
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: Connection(max_queued=max_queued), host, port),
            timeout_s,
        )
    except (OSError, TimeoutError) as exc:
        raise MqttError(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from None
    packet = connect_packet(
        client_id=client_id,
        username=username,
        password=password,
        keepalive_s=keepalive_s,
        clean_start=clean_start,
        session_expiry_s=session_expiry_s,
        receive_maximum=receive_maximum,
    )
    try:
        await protocol._handshake(packet, keepalive_s, timeout_s)
    except BaseException:
        await protocol.close()
        raise
    return protocol
