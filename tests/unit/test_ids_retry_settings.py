"""UUIDv7 ids, the retry policy's bounds, settings from the environment."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import pytest
from iotgw_core.ids import uuid7, uuid7_str
from iotgw_core.retry import RetryPolicy
from iotgw_core.settings import CommonSettings, SettingsError, load_settings

from tests.tools.gen_config_doc import render

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def test_uuid7_is_version_7_and_increasing() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids, key=lambda u: u.int)
    assert len(set(ids)) == len(ids)


def test_uuid7_str_is_the_canonical_form_of_an_increasing_uuid7() -> None:
    texts = [uuid7_str() for _ in range(5000)]
    ids = [uuid.UUID(t) for t in texts]
    assert [str(i) for i in ids] == texts  # canonical: lower-case 8-4-4-4-12
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids, key=lambda u: u.int) and len(set(ids)) == len(ids)
    # The millisecond leads, and ids of the string and integer forms interleave in order.
    before, middle, after = uuid7(), uuid.UUID(uuid7_str()), uuid7()
    assert before.int < middle.int < after.int
    assert abs((middle.int >> 80) - time.time_ns() // 1_000_000) < 5_000


def test_full_jitter_backoff_stays_within_its_ceiling() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=8.0, max_attempts=5)
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # jitter spans the range, not a constant
    assert not policy.exhausted(4) and policy.exhausted(5)


def test_settings_from_environment_and_files(tmp_path: Path) -> None:
    secret = tmp_path / "redis_url"
    secret.write_text("redis://10.0.0.1:6379/3\n")
    s = load_settings(
        CommonSettings,
        {
            "IOTGW_TENANT": "acme",
            "IOTGW_SPOOL_MAX_RECORDS": "500",
            "IOTGW_REDIS_URL_FILE": str(secret),
        },
    )
    assert (s.tenant, s.spool_max_records, s.redis_url) == ("acme", 500, "redis://10.0.0.1:6379/3")


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"IOTGW_SPOOL_MAX_RECORDS": "many"}, "IOTGW_SPOOL_MAX_RECORDS"),
        ({"IOTGW_SPOOL_HIGH_WATER": "1.5"}, "IOTGW_SPOOL_HIGH_WATER"),
        ({"IOTGW_LOG_LEVEL": "LOUD"}, "IOTGW_LOG_LEVEL"),
        ({"IOTGW_REDIS_URL_FILE": "/nonexistent/secret"}, "IOTGW_REDIS_URL_FILE"),
    ],
)
def test_bad_setting_is_a_clear_error(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(CommonSettings, env)
    assert names in str(info.value)


def test_configuration_doc_is_generated_from_the_settings() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render(), "docs/configuration.md is stale: run `make docs`"


async def test_redis_replies_are_parsed_by_hiredis() -> None:
    """The forwarder's Redis cost rests on the C parser (docs/performance.md)."""
    from iotgw_core.stream import connect
    from redis._parsers.hiredis import _AsyncHiredisParser

    client = connect("redis://127.0.0.1:1/0")
    try:
        connection = client.connection_pool.make_connection()
        assert isinstance(connection._parser, _AsyncHiredisParser)
    finally:
        await client.aclose()
