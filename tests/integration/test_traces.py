"""One record's trace runs from ingest through the Redis hop to the sink, with the right parents.

ingest-http and forwarder run as processes exporting OTLP/HTTP to a small
receiver (tests/support/otlp_receiver.py) that decodes ExportTraceServiceRequest.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.procs import free_port
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STREAM_PUBLISH = "publish {stream}"
STREAM_PROCESS = "process {stream}"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    rx = OtlpReceiver().start()
    yield rx
    rx.stop()


@pytest.fixture
def traced_stack(
    gateway_env: dict[str, str], tmp_path: Path, receiver: OtlpReceiver
) -> Iterator[tuple[Stack, int]]:
    metrics_port = free_port()
    env = {
        **gateway_env,
        "IOTGW_OTLP_ENDPOINT": receiver.endpoint,
        "IOTGW_METRICS_PORT": str(metrics_port),
        "IOTGW_TRACE_SAMPLE_RATIO": "1.0",
    }
    stack = Stack(env, tmp_path).start()
    yield stack, metrics_port
    stack.stop()


def _one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def test_one_record_one_trace_across_the_redis_hop(
    traced_stack: tuple[Stack, int], receiver: OtlpReceiver, gateway_env: dict[str, str]
) -> None:
    stack, metrics_port = traced_stack
    stream = gateway_env["IOTGW_STREAM_KEY"]
    trace_id, device_span = secrets.token_hex(16), secrets.token_hex(8)
    with stack.client() as http:
        resp = http.post(
            "/v1/ingest/trace-dev",
            json={"seq": 7, "metrics": {"temp_c": 21.5}},
            headers={"traceparent": f"00-{trace_id}-{device_span}-01"},
        )
    assert resp.status_code == 202
    record_id = resp.json()["id"]
    [envelope] = stack.wait_outbox(1)

    names = {
        "POST /v1/ingest/{device_id}",
        "ingest telemetry",
        "spool commit",
        STREAM_PUBLISH.format(stream=stream),
        STREAM_PROCESS.format(stream=stream),
        "publish file",
    }
    spans = receiver.wait_for(trace_id, names)
    server = next(s for s in spans if s.name.startswith("POST "))
    ingest = _one(spans, "ingest telemetry")
    commit = _one(spans, "spool commit")
    handoff = _one(spans, STREAM_PUBLISH.format(stream=stream))
    forward = _one(spans, STREAM_PROCESS.format(stream=stream))
    publish = _one(spans, "publish file")

    # Parentage: device -> HTTP server -> ingest -> {commit, stream publish, forward -> sink}.
    assert server.parent_span_id == device_span
    assert ingest.parent_span_id == server.span_id
    assert commit.parent_span_id == ingest.span_id
    assert handoff.parent_span_id == ingest.span_id
    assert forward.parent_span_id == ingest.span_id
    assert publish.parent_span_id == forward.span_id
    # Two processes: the Redis hop was crossed by the context in the stream entry.
    assert {server.service, ingest.service, commit.service, handoff.service} == {"ingest-http"}
    assert {forward.service, publish.service} == {"forwarder"}

    for span in (ingest, handoff, forward):
        assert span.attributes["iotgw.record.id"] == record_id
        assert span.attributes["iotgw.device_id"] == "trace-dev"
        assert span.attributes["iotgw.tenant"] == "default"
        assert span.attributes["messaging.message.id"] == record_id
    assert ingest.attributes["iotgw.seq"] == 7
    assert ingest.attributes["iotgw.site"] == "default"
    assert forward.attributes["iotgw.seq"] == 7
    assert forward.attributes["messaging.system"] == "redis"
    assert forward.attributes["messaging.destination.name"] == stream
    assert forward.attributes["messaging.operation.type"] == "process"
    assert handoff.attributes["messaging.operation.type"] == "publish"
    assert publish.attributes["iotgw.attempt"] == 1
    assert publish.attributes["iotgw.outcome"] == "delivered"

    # The envelope carries the ingest span's context on to the cloud.
    assert envelope["trace"]["traceparent"] == f"00-{trace_id}-{ingest.span_id}-01"

    # The forward latency histogram points at this trace (exemplar).
    text = httpx.get(
        f"http://127.0.0.1:{metrics_port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=5,
    ).text
    assert f'trace_id="{trace_id}"' in text


def test_record_without_traceparent_starts_its_own_trace(
    traced_stack: tuple[Stack, int], receiver: OtlpReceiver
) -> None:
    stack, _ = traced_stack
    with stack.client() as http:
        assert (
            http.post("/v1/ingest/root-dev", json={"seq": 1, "metrics": {"v": 1}}).status_code
            == 202
        )
    [envelope] = stack.wait_outbox(1)
    trace_id = envelope["trace"]["traceparent"].split("-")[1]
    spans = receiver.wait_for(trace_id, {"ingest telemetry", "publish file"})
    server = next(s for s in spans if s.name.startswith("POST "))
    assert server.parent_span_id == ""  # the root of its trace


def test_sampling_ratio_zero_keeps_device_decision(
    gateway_env: dict[str, str], tmp_path: Path, receiver: OtlpReceiver
) -> None:
    """Ratio 0 drops new traces, but a device's sampled traceparent is still followed."""
    env = {**gateway_env, "IOTGW_OTLP_ENDPOINT": receiver.endpoint, "IOTGW_TRACE_SAMPLE_RATIO": "0"}
    stack = Stack(env, tmp_path).start()
    try:
        trace_id = secrets.token_hex(16)
        with stack.client() as http:
            assert (
                http.post("/v1/ingest/s-dev", json={"seq": 1, "metrics": {"v": 1}}).status_code
                == 202
            )
            traced = http.post(
                "/v1/ingest/s-dev",
                json={"seq": 2, "metrics": {"v": 2}},
                headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
            )
            assert traced.status_code == 202
        records = stack.wait_outbox(2)
        receiver.wait_for(trace_id, {"publish file"})
        untraced = next(r for r in records if r["seq"] == 1)
        # Not sampled: it carries an unsampled context and none of its spans were exported.
        untraced_tp = untraced["trace"]["traceparent"]
        assert int(untraced_tp[-2:], 16) & 0x01 == 0
        assert receiver.trace(untraced_tp.split("-")[1]) == []
    finally:
        stack.stop()
