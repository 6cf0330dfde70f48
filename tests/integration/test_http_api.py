"""The HTTP contract, status by status, against the real app, spool and Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from iotgw_core.spool import Spool
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from tests.integration.conftest import AppFactory
from tests.support.stack import outbox_records

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
JSON = {"Content-Type": "application/json"}
GOOD = {"seq": 1, "metrics": {"temp_c": 21.5}, "tags": {"site": "AAL"}, "payload": {"raw": "ok"}}


@pytest.fixture(params=["process", "thread"])
async def client(
    request: pytest.FixtureRequest, make_client: AppFactory
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app on both of ingest's paths: the body validated and sealed in the spool
    writer process (the default), or on the event loop (the path that tracing takes;
    here because the writer is a thread)."""
    async with make_client(spool_writer=request.param) as c:
        assert c.app.state["pipeline"].seals_in_writer is (request.param == "process")
        yield c


async def post(
    client: AsyncTestClient[Any], device: str, body: Any, headers: dict[str, str] | None = None
) -> Any:
    return await client.post(
        f"/v1/ingest/{device}", content=json.dumps(body), headers={**JSON, **(headers or {})}
    )


async def test_202_once_durable_with_the_envelope_in_the_spool(
    client: AsyncTestClient[Any], gateway_env: dict[str, str]
) -> None:
    r = await post(
        client,
        "device_1",
        GOOD,
        headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    )
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "enqueued" and body["duplicate"] is False
    stored = Spool(gateway_env["IOTGW_SPOOL_PATH"]).get(body["id"])
    assert stored is not None and stored.state.label == "Enqueued"
    env = json.loads(stored.body)
    assert env["schema"] == "iotgw.envelope.v1" and env["class"] == "telemetry"
    assert (env["device_id"], env["seq"], env["metrics"], env["source"]) == (
        "device_1",
        1,
        {"temp_c": 21.5},
        "http",
    )
    assert env["gateway"]["id"] == "test-gw" and env["ts"] == env["received_at"]
    assert env["trace"]["traceparent"].startswith("00-aaaa")


async def test_repeat_of_device_seq_is_a_duplicate_not_a_second_record(
    client: AsyncTestClient[Any], gateway_env: dict[str, str]
) -> None:
    first = (await post(client, "dev", GOOD)).json()
    again = await post(client, "dev", {**GOOD, "metrics": {"temp_c": 99}})
    assert again.status_code == 202
    assert again.json() == {"id": first["id"], "status": "enqueued", "duplicate": True}
    other_device = (await post(client, "dev2", GOOD)).json()
    assert other_device["duplicate"] is False
    assert Spool(gateway_env["IOTGW_SPOOL_PATH"]).totals().records == 2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"metrics": {f"m{i}": 1 for i in range(33)}}, "too_many_metrics"),
        ({"metrics": {"Bad": 1}}, "invalid_metric_key"),
        ({"metrics": {"t": "hot"}}, "invalid_metric_value"),
        ({"metrics": {"t": 1}, "tags": {f"k{i}": "v" for i in range(17)}}, "too_many_tags"),
        ({"metrics": {"t": 1}, "tags": {"k": "v" * 65}}, "invalid_tag_value"),
        ({"metrics": {"t": 1}, "payload": [1]}, "invalid_payload"),
        ([1, 2], "invalid_body"),
    ],
)
async def test_400_names_the_broken_rule(
    client: AsyncTestClient[Any], body: Any, code: str
) -> None:
    r = await post(client, "dev", body)
    assert r.status_code == 400
    assert r.json()["code"] == code and r.json()["message"]


async def test_400_non_finite_and_malformed(client: AsyncTestClient[Any]) -> None:
    r = await client.post("/v1/ingest/dev", content=b'{"metrics":{"t":NaN}}', headers=JSON)
    assert (r.status_code, r.json()["code"]) == (400, "non_finite_metric")
    r = await client.post("/v1/ingest/dev", content=b'{"metrics":', headers=JSON)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_json")


async def test_400_bad_device_id(client: AsyncTestClient[Any]) -> None:
    r = await post(client, "x" * 65, GOOD)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_device_id")
    r = await post(client, "dev.1", GOOD)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_device_id")


async def test_415_when_not_json(client: AsyncTestClient[Any]) -> None:
    r = await client.post(
        "/v1/ingest/dev",
        content=b"temp=21",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type")
    r = await client.post(
        "/v1/ingest/dev", content=json.dumps(GOOD), headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 415
    r = await client.post("/v1/ingest/dev", content=json.dumps(GOOD))  # no Content-Type
    assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type")


@pytest.mark.parametrize(
    "ctype",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.x+json",
    ],
)
async def test_every_json_media_type_is_accepted(client: AsyncTestClient[Any], ctype: str) -> None:
    body = json.dumps({**GOOD, "seq": 900 + len(ctype)})
    r = await client.post("/v1/ingest/dev", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 202, r.text


async def test_413_over_the_limit(
    make_client: AppFactory,
) -> None:
    async with make_client(http_max_body_bytes="200") as client:
        big = {"metrics": {"t": 1}, "payload": {"x": "y" * 300}}
        r = await post(client, "dev", big)
        assert (r.status_code, r.json()["code"]) == (413, "body_too_large")
        assert "200" in r.json()["message"]

        assert (await post(client, "dev", GOOD)).status_code == 202


async def test_503_with_retry_after_while_draining(client: AsyncTestClient[Any]) -> None:
    client.app.state.pipeline.begin_drain()
    r = await post(client, "dev", GOOD)
    assert (r.status_code, r.json()["code"]) == (503, "draining")
    assert r.headers["retry-after"] == "5"
    ready = await client.get("/readyz")
    assert ready.status_code == 503


async def test_503_over_high_water_then_accepting_below_low_water(
    make_client: AppFactory, gateway_env: dict[str, str]
) -> None:
    async with make_client(
        spool_max_records="10", spool_high_water="0.5", spool_low_water="0.3", retry_after_s="2"
    ) as client:
        codes = [
            (await post(client, "dev", {"seq": i, "metrics": {"t": i}})).status_code
            for i in range(5)
        ]
        assert codes == [202] * 5
        r = await post(client, "dev", {"seq": 99, "metrics": {"t": 1}})
        assert (r.status_code, r.json()["code"], r.headers["retry-after"]) == (
            503,
            "spool_full",
            "2",
        )
        assert (await client.get("/readyz")).status_code == 503
        health = (await client.get("/healthz")).json()
        assert health["components"]["spool"]["status"] == "full"
        # The records are delivered and acked: the budget check prunes them early.
        spool = Spool(gateway_env["IOTGW_SPOOL_PATH"])
        spool.mark_acked([r.rid for r in spool.load(list(range(1, 100)))])
        for _ in range(50):
            await asyncio.sleep(0.1)
            if not client.app.state.pipeline.full:
                break
        assert (await post(client, "dev", {"seq": 100, "metrics": {"t": 1}})).status_code == 202
        # Acked records went to make room; nothing unacknowledged was touched.
        assert spool.counts_by_state()["Enqueued"] == 1


async def test_unacked_records_are_never_pruned_to_make_room(
    make_client: AppFactory, gateway_env: dict[str, str]
) -> None:
    async with make_client(
        spool_max_records="4", spool_high_water="0.5", spool_low_water="0.25"
    ) as client:
        for i in range(2):
            assert (await post(client, "dev", {"seq": i, "metrics": {"t": i}})).status_code == 202
        await asyncio.sleep(1.5)  # a budget round runs
        assert (await post(client, "dev", {"seq": 9, "metrics": {"t": 1}})).status_code == 503
    assert Spool(gateway_env["IOTGW_SPOOL_PATH"]).counts_by_state()["Enqueued"] == 2


async def test_ack_mode_sink_answers_200_once_delivered(
    make_client: AppFactory, run_forwarder: Any, gateway_env: dict[str, str]
) -> None:
    with run_forwarder():
        async with make_client(ack_mode="sink", sink_ack_timeout_s="10") as client:
            r = await post(client, "dev", GOOD)
            assert r.status_code == 200
            assert r.json()["status"] == "delivered"
            assert [rec["id"] for rec in outbox_records(Path(gateway_env["IOTGW_OUTBOX_DIR"]))] == [
                r.json()["id"]
            ]
            again = await post(client, "dev", GOOD)  # a duplicate of a delivered record
            assert (again.status_code, again.json()["duplicate"]) == (200, True)


async def test_ack_mode_sink_answers_202_when_the_sink_is_slower_than_the_timeout(
    make_client: AppFactory, run_forwarder: Any, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("the outbox cannot be created here")
    with run_forwarder(outbox_dir=str(blocked / "outbox")):
        async with make_client(ack_mode="sink", sink_ack_timeout_s="0.5") as client:
            r = await post(client, "dev", GOOD)
            assert (r.status_code, r.json()["status"]) == (202, "enqueued")


async def test_batch_has_a_result_per_item(
    client: AsyncTestClient[Any], gateway_env: dict[str, str]
) -> None:
    items = [
        {"seq": 1, "metrics": {"t": 1}},
        {"metrics": {"Bad": 1}},
        {"seq": 1, "metrics": {"t": 2}},
        {"payload": {"a": 1}},
    ]
    r = await client.post("/v1/ingest/dev/batch", content=json.dumps(items), headers=JSON)
    assert r.status_code == 202
    body = r.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (3, 1, 1)
    results = body["results"]
    assert [x["index"] for x in results] == [0, 1, 2, 3]
    assert results[1] == {
        "index": 1,
        "status": "rejected",
        "code": "invalid_metric_key",
        "message": results[1]["message"],
    }
    assert results[2]["duplicate"] is True and results[2]["id"] == results[0]["id"]
    assert Spool(gateway_env["IOTGW_SPOOL_PATH"]).totals().records == 2


async def test_batch_limits(make_client: AppFactory) -> None:
    async with make_client(http_max_batch_items="3", http_max_batch_bytes="500") as client:

        async def send(body: Any) -> Any:
            return await client.post("/v1/ingest/dev/batch", content=json.dumps(body), headers=JSON)

        r = await send([{"metrics": {"t": 1}}] * 4)
        assert (r.status_code, r.json()["code"]) == (400, "too_many_items")
        r = await send([])
        assert (r.status_code, r.json()["code"]) == (400, "empty_batch")
        r = await send({"metrics": {"t": 1}})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_batch")
        r = await send([{"payload": {"x": "y" * 600}}])
        assert (r.status_code, r.json()["code"]) == (413, "body_too_large")
        r = await send([{"metrics": {"Bad": 1}}])
        assert (r.status_code, r.json()["code"]) == (400, "no_valid_reading")


async def test_health_ready_metrics(client: AsyncTestClient[Any]) -> None:
    await post(client, "dev", GOOD)
    await post(client, "dev", {"metrics": {"Bad": 1}})
    health = await client.get("/healthz")
    assert health.status_code == 200
    components = health.json()["components"]
    assert components["spool"]["status"] == "ok" and components["spool"]["records"] == 1
    assert components["stream"]["status"] == "ok"
    assert "sink" in components
    assert (await client.get("/readyz")).status_code == 200
    text = (await client.get("/metrics")).text
    assert 'gateway_events_received_total{source="http"}' in text
    assert 'gateway_events_rejected_total{reason="invalid_metric_key",source="http"}' in text


def _event_counts() -> dict[str, float]:
    samples = {
        "received": ("gateway_events_received_total", {"source": "http"}),
        "accepted": (
            "gateway_events_accepted_total",
            {"source": "http", "record_class": "telemetry"},
        ),
        "duplicate": ("gateway_events_duplicate_total", {"source": "http"}),
        "rejected": (
            "gateway_events_rejected_total",
            {"source": "http", "reason": "invalid_metric_key"},
        ),
    }
    return {
        key: REGISTRY.get_sample_value(name, labels) or 0.0
        for key, (name, labels) in samples.items()
    }


async def test_event_counters_count_each_reading_once(client: AsyncTestClient[Any]) -> None:
    before = _event_counts()
    reading = {"seq": 41, "metrics": {"t": 1}}
    assert (await post(client, "dev-counts", reading)).json()["duplicate"] is False
    assert (await post(client, "dev-counts", reading)).json()["duplicate"] is True
    assert (await post(client, "dev-counts", {"metrics": {"Bad": 1}})).status_code == 400
    batch = [{"seq": 42, "metrics": {"t": 1}}, reading, {"metrics": {"Bad": 1}}]
    r = await client.post("/v1/ingest/dev-counts/batch", content=json.dumps(batch), headers=JSON)
    assert r.status_code == 202
    after = _event_counts()
    assert {key: after[key] - before[key] for key in before} == {
        "received": 6,
        "accepted": 2,
        "duplicate": 2,
        "rejected": 2,
    }


async def test_health_reports_redis_down_but_ingest_stays_durable(make_client: AppFactory) -> None:
    async with make_client(redis_url="redis://127.0.0.1:1/0") as client:
        r = await post(client, "dev", GOOD)
        assert r.status_code == 202  # the spool is the truth; the reconciler hands it off later
        health = (await client.get("/healthz")).json()
        assert health["status"] == "degraded"
        assert health["components"]["stream"]["status"] == "down"


async def test_errors_of_the_framework_keep_the_error_shape(client: AsyncTestClient[Any]) -> None:
    r = await client.get("/v1/ingest/dev")
    assert (r.status_code, r.json()["code"]) == (405, "method_not_allowed")
    r = await client.get("/nowhere")
    assert (r.status_code, r.json()["code"]) == (404, "not_found")


async def test_openapi_is_served_and_matches_the_committed_document(
    client: AsyncTestClient[Any],
) -> None:
    served = (await client.get("/docs/openapi.json")).json()
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert served == committed, "docs/openapi.json drifted: run `make openapi`"
    responses = served["paths"]["/v1/ingest/{device_id}"]["post"]["responses"]
    assert {"200", "202", "400", "413", "415", "503"} <= set(responses)
    assert "Retry-After" in responses["503"]["headers"]
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text


async def test_bench_endpoints_exist_only_when_switched_on_and_the_floor_commits(
    make_client: AppFactory, gateway_env: dict[str, str]
) -> None:
    async with make_client() as client:
        for path in ("/bench/noop", "/bench/commit"):
            assert (await client.post(path, content=b"{}", headers=JSON)).status_code == 404
    async with make_client(http_bench_endpoints="true") as client:
        assert (await client.post("/bench/noop", content=b"{}", headers=JSON)).status_code == 202
        r = await client.post("/bench/commit", content=b'{"seq":1}', headers=JSON)
        assert r.status_code == 202
    # The floor of `make bench` is a real group commit: the body is in the spool.
    stored = Spool(gateway_env["IOTGW_SPOOL_PATH"]).get(r.json()["id"])
    assert stored is not None and stored.body == b'{"seq":1}'
    assert stored.state.label == "Enqueued"
