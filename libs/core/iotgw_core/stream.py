"""The record stream: a Redis Stream that hands record ids from ingest to the forwarder.

Redis is the bus, not the source of truth: an entry names records (spool
rid, id, device key, trace context); the forwarder loads them from the spool.
One entry carries a whole group-commit batch (up to ``MAX_RECORDS_PER_ENTRY``
records), so the Redis cost is per transaction, not per record. Entries are
deleted once every record they name is done, so the stream holds exactly the
records not yet done, which is what the reconciler compares with the spool
after Redis restarted empty.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .spool import AppendResult, Committed

MAX_RECORDS_PER_ENTRY = 500
_encode = msgspec.json.Encoder().encode
_decode_records = msgspec.json.Decoder(list[tuple[int, str, str, str, str]]).decode


class StreamEntry(msgspec.Struct, frozen=True, gc=False):
    """One record named by a stream entry (several records may share ``entry_id``).

    A msgspec Struct: the forwarder unpacks one per record read, and a frozen
    dataclass's ``__init__`` cost several times as much.
    """

    rid: int
    id: str
    tenant: str
    device_id: str
    traceparent: str | None = None
    entry_id: str = ""

    @classmethod
    def of_commit(
        cls, records: Sequence[Committed], results: Sequence[AppendResult]
    ) -> list[StreamEntry]:
        """The entries naming a commit's stored records (a duplicate was handed over
        with its original)."""
        return [
            cls(res.rid, res.id, rec.tenant, rec.device_id, rec.traceparent)
            for rec, res in zip(records, results, strict=True)
            if not res.duplicate
        ]

    @staticmethod
    def pack(entries: Sequence[StreamEntry]) -> dict[str, bytes]:
        """The fields of one Redis entry naming ``entries``."""
        return {
            "recs": _encode(
                [(e.rid, e.id, e.tenant, e.device_id, e.traceparent or "") for e in entries]
            )
        }

    @classmethod
    def unpack(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> list[StreamEntry]:
        """The records named by one entry, as XREADGROUP/XAUTOCLAIM returned it."""
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        raw = fields.get(b"recs")
        if raw is None:
            return []
        return [
            cls(rid, rec_id, tenant, device, tp or None, eid)
            for rid, rec_id, tenant, device, tp in _decode_records(raw)
        ]


# Short timeouts, so that an absent Redis is noticed quickly.
_CONNECT_TIMEOUT_S = 2
_TIMEOUT_S = 10


def connect(url: str) -> aioredis.Redis:
    """A Redis client with short timeouts, so an absent Redis is noticed quickly."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=_CONNECT_TIMEOUT_S,
        socket_timeout=_TIMEOUT_S,
        health_check_interval=15,
    )


class RecordStream:
    """The hand-off stream and its consumer group (all commands pipelined per batch)."""

    def __init__(self, client: aioredis.Redis, key: str, group: str) -> None:
        self.client = client
        self.key = key
        self.group = group
        self.acked_channel = f"{key}:acked"
        self.epoch_key = f"{key}:epoch"
        self.status_key = f"{key}:forwarder-status"

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group if absent (reading from the start)."""
        try:
            await self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def add_many(self, entries: Sequence[StreamEntry]) -> None:
        """Hand the records over, in order: one XADD per MAX_RECORDS_PER_ENTRY records."""
        if not entries:
            return
        if len(entries) <= MAX_RECORDS_PER_ENTRY:
            await self.client.xadd(self.key, StreamEntry.pack(entries))  # type: ignore[arg-type]
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for chunk in _chunks(entries):
                pipe.xadd(self.key, StreamEntry.pack(chunk))  # type: ignore[arg-type]
            await pipe.execute()

    async def read(
        self, consumer: str, count: int, block_ms: int | None, *, own_pending: bool = False
    ) -> list[StreamEntry]:
        """Read new entries for ``consumer`` (or, with ``own_pending``, its unacked ones).

        ``block_ms=None`` returns at once; otherwise waits up to that long for entries.
        """
        response: Any = await self.client.xreadgroup(
            self.group,
            consumer,
            {self.key: "0" if own_pending else ">"},
            count=count,
            block=None if own_pending or not block_ms else block_ms,
        )
        return [
            record
            for _stream, messages in response or []
            for entry_id, fields in messages
            if fields  # an entry deleted while pending comes back without fields
            for record in StreamEntry.unpack(entry_id, fields)
        ]

    async def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[StreamEntry]:
        """Take over entries that another (dead) consumer left pending (XAUTOCLAIM)."""
        claimed: list[StreamEntry] = []
        start = "0-0"
        for _ in range(100):  # bounded walk over the pending list
            result: Any = await self.client.xautoclaim(
                self.key, self.group, consumer, min_idle_ms, start_id=start, count=count
            )
            start, messages = result[0], result[1]
            claimed.extend(
                record
                for entry_id, fields in messages
                if fields
                for record in StreamEntry.unpack(entry_id, fields)
            )
            if start in (b"0-0", "0-0") or len(claimed) >= count:
                break
        return claimed

    async def ack(self, entry_ids: Sequence[str], *, acked_records: Sequence[str] = ()) -> None:
        """XACK and delete finished entries (the stream keeps only unfinished records).

        ``acked_records`` (record ids) are published on :attr:`acked_channel` for the
        requests waiting in ack mode ``sink``, in the same round trip. A failed
        XACK/XDEL raises; a refused PUBLISH is ignored.
        """
        if not entry_ids and not acked_records:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            if entry_ids:
                pipe.xack(self.key, self.group, *entry_ids)
                pipe.xdel(self.key, *entry_ids)
            if acked_records:
                pipe.publish(self.acked_channel, ",".join(acked_records))
            results = await pipe.execute(raise_on_error=False)
        for result in results[: 2 if entry_ids else 0]:
            if isinstance(result, Exception):
                raise result

    async def record_ids(self, page: int = 1000, limit: int = 5_000_000) -> set[str]:
        """Ids of every record that has an entry in the stream (bounded scan)."""
        ids: set[str] = set()
        start = "-"
        seen = 0
        while seen < limit:
            batch: Any = await self.client.xrange(self.key, min=start, max="+", count=page)
            if not batch:
                break
            for entry_id, fields in batch:
                ids.update(record.id for record in StreamEntry.unpack(entry_id, fields))
            seen += len(batch)
            last = batch[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else last)
            if len(batch) < page:
                break
        return ids

    async def length(self) -> int:
        """Entries in the stream (records handed off and not yet done)."""
        return int(await self.client.xlen(self.key))


def _chunks(entries: Sequence[StreamEntry]) -> Iterator[Sequence[StreamEntry]]:
    for start in range(0, len(entries), MAX_RECORDS_PER_ENTRY):
        yield entries[start : start + MAX_RECORDS_PER_ENTRY]


def add_many_blocking(client: redis.Redis, key: str, entries: Sequence[StreamEntry]) -> None:
    """:meth:`RecordStream.add_many` with a blocking client (the spool writer process)."""
    pipe = client.pipeline(transaction=False)
    for chunk in _chunks(entries):
        pipe.xadd(key, StreamEntry.pack(chunk))  # type: ignore[arg-type]
    pipe.execute()


def connect_blocking(url: str) -> redis.Redis:
    """A blocking Redis client with the timeouts of :func:`connect`."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=_CONNECT_TIMEOUT_S, socket_timeout=_TIMEOUT_S
    )
