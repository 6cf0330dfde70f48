"""Device metrics and commit latency of HTTP readings sealed in the spool writer process.

The child counts the readings it seals and reports every COUNTS_INTERVAL_S,
with a reply or on its own once idle; the service adds the reports to its
Prometheus metrics (docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from iotgw_core.spool_process import COUNTS_INTERVAL_S
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

pytestmark = pytest.mark.integration


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _settled(read: Any, expected: Any, timeout_s: float = 10.0) -> Any:
    """``read()`` once it gives ``expected`` (polled while the event loop runs on)."""
    for _ in range(int(timeout_s / 0.05)):
        if (got := read()) == expected:
            return got
        await asyncio.sleep(0.05)
    return read()


async def test_the_writer_counts_devices_and_commit_latency_for_the_service(
    client: AsyncTestClient[Any],
) -> None:
    assert client.app.state["pipeline"].seals_in_writer  # the path under test
    tenant = "default"
    dev, other = f"wc-{uuid.uuid4().hex[:8]}", f"wc-{uuid.uuid4().hex[:8]}"
    commits = _value("gateway_spool_commit_seconds_count")
    posts = [
        (dev, {"seq": 1, "metrics": {"t": 1.0, "reconnects": 2}}),
        (dev, {"seq": 4, "metrics": {"t": 1.0, "reconnects": 5}}),  # 2, 3 skipped; 3 reconnects
        (dev, {"seq": 4, "metrics": {"t": 2.0}}),  # a repeat
        (other, {"seq": 1, "metrics": {"t": 1.0}}),
        (dev, {"seq": 5, "metrics": {"Bad": 1.0}}),  # breaks a rule: counts nowhere
    ]
    started = time.time()
    statuses = [(await client.post(f"/v1/ingest/{d}", json=body)).status_code for d, body in posts]
    assert statuses == [202, 202, 202, 202, 400]

    # Nothing more is sent: what the writer counted after its last report comes on its
    # own once it is idle for COUNTS_INTERVAL_S.
    def device(name: str, device_id: str = dev) -> float:
        return _value(f"gateway_device_{name}", tenant=tenant, device_id=device_id)

    assert await _settled(lambda: device("records_total"), 2.0) == 2.0
    assert await _settled(lambda: device("records_total", other), 1.0) == 1.0
    assert device("duplicates_total") == 1.0
    assert device("seq_gaps_total") == 2.0
    assert device("reconnects_total") == 3.0
    assert started <= device("last_seen_timestamp_seconds") <= time.time()
    # One commit latency per request whose reading was stored (the repeat too).
    assert await _settled(lambda: _value("gateway_spool_commit_seconds_count") - commits, 4) == 4
    assert _value("gateway_spool_commit_seconds_sum") > 0


async def test_a_reading_after_a_pause_is_counted_in_the_next_report(
    client: AsyncTestClient[Any],
) -> None:
    dev = f"wc-{uuid.uuid4().hex[:8]}"

    def records() -> float:
        return _value("gateway_device_records_total", tenant="default", device_id=dev)

    for seq in (1, 2):
        answer = await client.post(f"/v1/ingest/{dev}", json={"seq": seq, "metrics": {"t": 1.0}})
        assert answer.status_code == 202
        assert await _settled(records, float(seq)) == seq
        await asyncio.sleep(COUNTS_INTERVAL_S)  # the child idles past its interval
