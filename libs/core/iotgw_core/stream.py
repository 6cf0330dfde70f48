"""The record stream: a Redis Stream that hands record ids from ingest to the forwarder.

Redis is the bus, not the source of truth: an entry carries only the record's
spool rid, id, device key and trace context; the forwarder loads the record
from the spool. Entries are deleted once acknowledged, so the stream holds
exactly the records not yet done, which is what the reconciler compares
with the spool after Redis restarted empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One hand-off: which spool record to forward."""

    rid: int
    id: str
    tenant: str
    device_id: str
    traceparent: str | None = None
    entry_id: str = ""

    def fields(self) -> dict[str, str | int]:
        """The entry's fields as stored in Redis."""
        out: dict[str, str | int] = {
            "rid": self.rid,
            "id": self.id,
            "tenant": self.tenant,
            "device": self.device_id,
        }
        if self.traceparent:
            out["tp"] = self.traceparent
        return out

    @classmethod
    def parse(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> StreamEntry:
        """Build an entry from what XREADGROUP returned."""
        tp = fields.get(b"tp")
        return cls(
            rid=int(fields[b"rid"]),
            id=fields[b"id"].decode(),
            tenant=fields[b"tenant"].decode(),
            device_id=fields[b"device"].decode(),
            traceparent=tp.decode() if tp else None,
            entry_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        )


def connect(url: str) -> aioredis.Redis:
    """A Redis client with short timeouts, so an absent Redis is noticed quickly."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=10,
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
        """XADD every entry, in order, in one pipeline."""
        if not entries:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.xadd(self.key, entry.fields())  # type: ignore[arg-type]
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
            StreamEntry.parse(entry_id, fields)
            for _stream, messages in response or []
            for entry_id, fields in messages
            if fields  # an entry deleted while pending comes back without fields
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
                StreamEntry.parse(entry_id, fields) for entry_id, fields in messages if fields
            )
            if start in (b"0-0", "0-0") or len(claimed) >= count:
                break
        return claimed

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """XACK and delete finished entries (the stream keeps only unfinished records)."""
        if not entry_ids:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xack(self.key, self.group, *entry_ids)
            pipe.xdel(self.key, *entry_ids)
            await pipe.execute()

    async def record_ids(self, page: int = 1000, limit: int = 5_000_000) -> set[str]:
        """Ids of every record that has an entry in the stream (bounded scan)."""
        ids: set[str] = set()
        start = "-"
        seen = 0
        while seen < limit:
            batch: Any = await self.client.xrange(self.key, min=start, max="+", count=page)
            if not batch:
                break
            for _entry_id, fields in batch:
                if b"id" in fields:
                    ids.add(fields[b"id"].decode())
            seen += len(batch)
            last = batch[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else last)
            if len(batch) < page:
                break
        return ids

    async def length(self) -> int:
        """Entries in the stream (records handed off and not yet done)."""
        return int(await self.client.xlen(self.key))

    async def publish_acked(self, record_ids: Sequence[str]) -> None:
        """Tell waiting ingest requests (ack mode ``sink``) that these records were acked."""
        if record_ids:
            await self.client.publish(self.acked_channel, ",".join(record_ids))
