"""AWS IoT Core limits as the sinks check them: topics, sizes, pacing."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from iotgw_core.spool import State, StoredRecord
from iotgw_forwarder.sinks.common import (
    PermanentError,
    TokenBucket,
    TopicTemplate,
    batch_payload,
    check_size,
    check_topic,
)

pytestmark = pytest.mark.unit


def rec(device: str = "stm32-01", site: str = "aal") -> StoredRecord:
    body = {"id": "x", "tenant": "acme", "site": site, "device_id": device, "class": "health"}
    return StoredRecord(
        1, "x", "acme", device, None, State.ENQUEUED, 0, None, 0.0, None, json.dumps(body).encode()
    )


def test_default_topic_and_basic_ingest() -> None:
    assert TopicTemplate().render(rec()) == "dt/acme/aal/stm32-01/health"
    rule = TopicTemplate(basic_ingest_rule="to_s3").render(rec())
    assert rule == "$aws/rules/to_s3/dt/acme/aal/stm32-01/health"


@pytest.mark.parametrize(
    "topic",
    ["a/b/c/d/e/f/g/h/i", "dt/+/x", "dt/#", "$sys/x", "", "t/" + "x" * 300],
)
def test_invalid_topics_are_permanent(topic: str) -> None:
    with pytest.raises(PermanentError, match=r"^invalid_topic"):
        check_topic(topic)


def test_template_with_too_many_levels_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="slashes"):
        TopicTemplate("a/b/c/d/e/f/{tenant}/{site}/{device_id}").validate()
    with pytest.raises(ValueError, match="nope"):
        TopicTemplate("dt/{nope}").validate()


def test_size_limit_counts_topic_and_header() -> None:
    check_size(1000, "dt/a", 128 * 1024)
    with pytest.raises(PermanentError, match=r"^payload_too_large"):
        check_size(128 * 1024, "dt/a", 128 * 1024)


def test_batch_payload_is_a_json_array_in_order() -> None:
    assert batch_payload([b'{"a":1}']) == b'{"a":1}'
    assert json.loads(batch_payload([b'{"a":1}', b'{"a":2}'])) == [{"a": 1}, {"a": 2}]


def test_token_bucket_holds_rate_plus_burst_in_a_second() -> None:
    async def count_in(seconds: float) -> int:
        bucket = TokenBucket(rate=50, burst=5)
        taken = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await bucket.take()
            taken += 1
        return taken

    assert asyncio.run(count_in(1.0)) <= 5 + 50 + 1
