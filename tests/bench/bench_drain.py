"""``make bench BENCH=drain``: how fast a backlog drains into the AWS IoT Core stand-in.

A backlog is built through the HTTP batch endpoint with the forwarder
stopped (that rate is the "live ingest rate" the drain is compared with),
then the forwarder starts and the time until every record is Acked is
measured. Configurations: one paced connection without batching (AWS IoT
Core's ~100 publishes/s per connection is the ceiling, so it gets a smaller
backlog), and a pool of connections with batching, on the full 100,000.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench import service_env
from tests.support.aws_standin import AwsIotStandin
from tests.support.procs import RedisServer
from tests.support.stack import Stack, wait_until

DEVICES = 20
BACKLOG = 100_000
SMALL_BACKLOG = 3_000  # one paced connection drains ~90 records/s


def _acked(spool: str) -> int:
    with sqlite3.connect(spool) as conn:
        return int(conn.execute("SELECT count(*) FROM records WHERE state=2").fetchone()[0])


def _fill(client: httpx.Client, total: int) -> float:
    """POST ``total`` readings over DEVICES devices, 250 a request; returns records/s."""
    per_device = total // DEVICES
    started = time.perf_counter()
    for first in range(0, per_device, 250):
        for d in range(DEVICES):
            last = min(first + 250, per_device)
            body = [{"seq": s, "metrics": {"v": float(s), "t": 21.5}} for s in range(first, last)]
            response = client.post(f"/v1/ingest/dev-{d:02d}/batch", json=body)
            response.raise_for_status()
    return per_device * DEVICES / (time.perf_counter() - started)


def _one(
    work: Path, redis: RedisServer, name: str, total: int, extra: dict[str, str]
) -> tuple[float, float]:
    """(drain records/s, live ingest records/s) of one configuration."""
    base = work / name
    standin = AwsIotStandin(base / "standin").start()
    env = service_env(
        base,
        redis.url,
        IOTGW_STREAM_KEY=f"bench:{name}",
        IOTGW_HTTP_MAX_BATCH_BYTES=str(4 << 20),
        IOTGW_AUTH_MODE="none",
        IOTGW_MAX_PENDING_RECORDS="20000",
        **standin.sink_env(),
        **extra,
    )
    stack = Stack(env, base)
    stack.start_ingest()
    try:
        with httpx.Client(base_url=stack.base_url, timeout=60) as client:
            ingest_rate = _fill(client, total)
        started = time.perf_counter()
        stack.start_forwarder()
        wait_until(lambda: _acked(env["IOTGW_SPOOL_PATH"]) >= total, 900, f"{name} drained")
        drain_rate = total / (time.perf_counter() - started)
    finally:
        stack.stop()
        standin.stop()
    return drain_rate, ingest_rate


def run() -> dict[str, float]:
    """Drain rates with and without pooling/batching, and their ratio to the ingest rate."""
    configs: list[tuple[str, int, dict[str, str]]] = [
        ("single_unbatched", SMALL_BACKLOG, {}),
        (
            "pool4_batch25",
            BACKLOG,
            {"IOTGW_MQTT_SINK_CONNECTIONS": "4", "IOTGW_SINK_BATCH_MAX_RECORDS": "25"},
        ),
        (
            "pool8_batch50",
            BACKLOG,
            {"IOTGW_MQTT_SINK_CONNECTIONS": "8", "IOTGW_SINK_BATCH_MAX_RECORDS": "50"},
        ),
    ]
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        work = Path(tmp)
        redis = RedisServer(work / "redis").start()
        try:
            for name, total, extra in configs:
                drain_rate, ingest_rate = _one(work, redis, name, total, extra)
                figures[f"drain_{name}_records"] = float(total)
                figures[f"drain_{name}_records_per_s"] = round(drain_rate, 1)
                figures[f"drain_{name}_ingest_records_per_s"] = round(ingest_rate, 1)
                figures[f"drain_{name}_ratio_to_ingest"] = round(drain_rate / ingest_rate, 3)
                print(
                    f"drain {name}: {total} records, {drain_rate:,.0f} records/s drained,"
                    f" ingest {ingest_rate:,.0f} records/s, ratio {drain_rate / ingest_rate:.3f}",
                    flush=True,
                )
        finally:
            redis.stop()
    return figures
