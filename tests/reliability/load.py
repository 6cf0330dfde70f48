"""A bounded HTTP load client that remembers which readings got a 202."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class LoadResult:
    """What the client saw: seqs acknowledged (202), and the other outcomes."""

    acked: set[int] = field(default_factory=set)
    ids: dict[int, str] = field(default_factory=dict)
    refused: dict[int, int] = field(default_factory=dict)
    failed: int = 0


async def send_readings(
    base_url: str,
    count: int,
    *,
    device: str = "dev-load",
    concurrency: int = 32,
    time_limit_s: float = 120.0,
    on_ack: Callable[[int], None] | None = None,
    pause_on_error_s: float = 0.05,
) -> LoadResult:
    """POST ``count`` readings with distinct seq; never more than ``time_limit_s``."""
    result = LoadResult()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for seq in range(count):
        queue.put_nowait(seq)
    deadline = time.monotonic() + time_limit_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty() and time.monotonic() < deadline:
            seq = queue.get_nowait()
            body = json.dumps({"seq": seq, "metrics": {"temp_c": seq / 10}})
            try:
                r = await client.post(
                    f"/v1/ingest/{device}",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
            except httpx.HTTPError:
                result.failed += 1
                await asyncio.sleep(pause_on_error_s)
                continue
            if r.status_code == 202:
                result.acked.add(seq)
                result.ids[seq] = r.json()["id"]
                if on_ack is not None:
                    on_ack(len(result.acked))
            else:
                result.refused[seq] = r.status_code

    async with httpx.AsyncClient(base_url=base_url, timeout=10, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return result
