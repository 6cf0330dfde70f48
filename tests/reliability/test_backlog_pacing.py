"""After an outage the backlog drains at a capped rate, and live data need not wait behind it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from iotgw_core.ingest import IngestPipeline
from iotgw_core.settings import CommonSettings, load_settings
from iotgw_core.sink import Delivery, MemorySink
from iotgw_core.spool import StoredRecord
from iotgw_forwarder.consumer import Forwarder
from iotgw_forwarder.settings import ForwarderSettings

from tests.reliability.test_sink_failures import ingest, until

pytestmark = pytest.mark.reliability


class RecordingSink(MemorySink):
    """The in-memory twin, remembering what each call carried; a slow uplink if asked."""

    def __init__(self, call_s: float = 0.0) -> None:
        super().__init__()
        self.call_s = call_s
        self.batches: list[list[str]] = []

    async def deliver(self, records: Sequence[StoredRecord]) -> list[Delivery]:
        self.batches.append([r.device_id for r in records])
        await asyncio.sleep(self.call_s)
        return await super().deliver(records)


async def drain_with_a_live_record(env: dict[str, str], sink: RecordingSink) -> int:
    """300 backlog records of 3 devices, then one live record; where the live one went."""
    pipeline = IngestPipeline(load_settings(CommonSettings, env), source="http")
    await pipeline.start()
    forwarder: Forwarder | None = None
    task: asyncio.Task[Any] | None = None
    try:
        for device in ("old-a", "old-b", "old-c"):
            await ingest(pipeline, device, range(100))
        await asyncio.sleep(0.5)  # older than the backlog age: an outage's worth
        forwarder = Forwarder(load_settings(ForwarderSettings, env), sink)
        task = asyncio.create_task(forwarder.run())
        await until(lambda: len(sink.delivered) >= 20, 20, "the backlog starts draining")
        await ingest(pipeline, "live", range(1))
        await until(lambda: any(r.device_id == "live" for r in sink.delivered), 30, "live record")
        return next(i for i, r in enumerate(sink.delivered) if r.device_id == "live")
    finally:
        if forwarder is not None and task is not None:
            forwarder.stop()
            await asyncio.wait_for(task, 15)
        await pipeline.stop()


async def test_backlog_drains_at_its_capped_rate(gateway_env: dict[str, str]) -> None:
    env = {**gateway_env, "IOTGW_BACKLOG_AGE_S": "0.3", "IOTGW_BACKLOG_MAX_RATE": "40"}
    sink = RecordingSink()
    await drain_with_a_live_record(env, sink)
    backlog_per_call = [sum(d != "live" for d in batch) for batch in sink.batches]
    # A bucket of one second's worth: no call carries more backlog than that.
    assert max(backlog_per_call) <= 40, backlog_per_call
    assert len(sink.delivered) < 301, "the capped backlog cannot have drained already"


@pytest.mark.parametrize("live_first", [True, False])
async def test_live_first_puts_live_devices_ahead_of_the_backlog(
    gateway_env: dict[str, str], live_first: bool
) -> None:
    env = {
        **gateway_env,
        "IOTGW_BACKLOG_AGE_S": "0.3",
        "IOTGW_FORWARD_BATCH": "10",
        "IOTGW_FORWARD_BATCH_PER_DEVICE": "10",
        "IOTGW_FORWARD_LINGER_S": "0",
        "IOTGW_BACKLOG_LIVE_FIRST": "true" if live_first else "false",
    }
    # 0.1 s a call of 10: the backlog takes 3 s, so the live record meets it.
    position = await drain_with_a_live_record(env, RecordingSink(call_s=0.1))
    if live_first:
        assert position < 60, position  # in the call after it arrived
    else:
        assert position >= 250, position  # behind the backlog lanes, in lane order
