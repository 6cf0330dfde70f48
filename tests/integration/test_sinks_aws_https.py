"""aws-iot-https and kinesis sinks against moto's server (real HTTP, real boto3)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import boto3
import pytest
from iotgw_core.sink import Outcome, SinkUnavailable
from iotgw_core.spool import State, StoredRecord
from iotgw_forwarder.sinks import AwsClientConfig, IotDataSink, KinesisSink
from moto.core import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer

from tests.support.procs import free_port

pytestmark = pytest.mark.integration
REGION = "eu-west-1"


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's server in this process on a free port (its backends are readable here)."""
    import os

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def record(rid: int, device: str, seq: int, body_extra: str = "") -> StoredRecord:
    env = {
        "id": f"id-{device}-{seq}",
        "tenant": "acme",
        "site": "aal",
        "device_id": device,
        "class": "telemetry",
        "seq": seq,
        "metrics": {"v": seq},
        "payload": {"blob": body_extra} if body_extra else None,
    }
    return StoredRecord(
        rid=rid,
        id=env["id"],  # type: ignore[arg-type]
        tenant="acme",
        device_id=device,
        seq=seq,
        state=State.INFLIGHT,
        attempts=0,
        last_error=None,
        created_at=time.time(),
        traceparent=None,
        body=json.dumps(env).encode(),
    )


def iot_payloads() -> list[tuple[str, bytes]]:
    from moto.iotdata.models import iotdata_backends

    return list(iotdata_backends[DEFAULT_ACCOUNT_ID][REGION].published_payloads)


def test_iot_data_publishes_with_topics_and_rejects_oversize(moto_url: str) -> None:
    async def scenario() -> list[object]:
        sink = IotDataSink(AwsClientConfig(region=REGION, endpoint_url=moto_url), rate=200)
        await sink.start()
        records = [record(i, f"dev-{i % 2}", i) for i in range(6)]
        records.append(record(99, "dev-big", 1, body_extra="x" * 140_000))
        answers = await sink.deliver(records)
        await sink.close()
        return [answers, sink.status()]

    answers, status = asyncio.run(scenario())
    assert [a.outcome for a in answers][:6] == [Outcome.DELIVERED] * 6  # type: ignore[attr-defined]
    assert answers[6].outcome is Outcome.REJECT  # type: ignore[index]
    assert answers[6].error.startswith("payload_too_large")  # type: ignore[index]
    published = iot_payloads()
    topics = {t for t, _ in published}
    assert {"dt/acme/aal/dev-0/telemetry", "dt/acme/aal/dev-1/telemetry"} <= topics
    ids = [json.loads(p)["id"] for _, p in published]
    assert [i for i in ids if i.startswith("id-dev-0")] == [
        "id-dev-0-0",
        "id-dev-0-2",
        "id-dev-0-4",
    ]
    assert status["published"] == 6  # type: ignore[index]


def test_iot_data_unreachable_is_sink_unavailable() -> None:
    async def scenario() -> None:
        sink = IotDataSink(
            AwsClientConfig(region=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}")
        )
        await sink.start()
        await sink.deliver([record(1, "dev-0", 1)])

    with pytest.raises(SinkUnavailable, match="unreachable"):
        asyncio.run(scenario())


def test_kinesis_put_records_in_requests_of_500(moto_url: str) -> None:
    client = boto3.client("kinesis", region_name=REGION, endpoint_url=moto_url)
    client.create_stream(StreamName="gw", ShardCount=1)

    async def scenario() -> list[object]:
        sink = KinesisSink(AwsClientConfig(region=REGION, endpoint_url=moto_url), "gw")
        await sink.start()
        records = [record(i, f"dev-{i % 3}", i) for i in range(1200)]
        return list(await sink.deliver(records))

    answers = asyncio.run(scenario())
    assert all(a.outcome is Outcome.DELIVERED for a in answers)  # type: ignore[attr-defined]
    shard = client.list_shards(StreamName="gw")["Shards"][0]["ShardId"]
    iterator = client.get_shard_iterator(
        StreamName="gw", ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    got: list[dict[str, object]] = []
    for _ in range(20):
        out = client.get_records(ShardIterator=iterator, Limit=10_000)
        got.extend(json.loads(r["Data"]) for r in out["Records"])
        iterator = out["NextShardIterator"]
        if len(got) >= 1200 or not out["Records"]:
            break
    assert len(got) == 1200
    dev0 = [r["seq"] for r in got if r["device_id"] == "dev-0"]
    assert dev0 == sorted(dev0)


def test_kinesis_missing_stream_makes_the_sink_unavailable(moto_url: str) -> None:
    async def scenario() -> None:
        sink = KinesisSink(AwsClientConfig(region=REGION, endpoint_url=moto_url), "absent")
        await sink.start()
        await sink.deliver([record(1, "dev-0", 1), record(2, "dev-0", 2)])

    with pytest.raises(SinkUnavailable, match=r"absent|not found"):
        asyncio.run(scenario())
