"""Property test: arbitrary JSON bodies, bytes and paths never produce a 5xx."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iotgw_core.settings import load_settings
from iotgw_ingest_http.app import create_app
from iotgw_ingest_http.settings import IngestHttpSettings
from litestar.testing import TestClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=40), inner, max_size=6)
    ),
    max_leaves=40,
)
keys = st.from_regex(r"[a-z][a-z0-9_]{0,34}", fullmatch=True) | st.text(max_size=36)
readings = st.fixed_dictionaries(
    {},
    optional={
        "ts": st.text(max_size=30) | st.datetimes().map(lambda d: d.isoformat() + "Z"),
        "seq": st.integers(min_value=-5, max_value=2**64) | json_values,
        "metrics": st.dictionaries(keys, st.floats() | st.integers() | json_values, max_size=34)
        | json_values,
        "tags": st.dictionaries(keys, st.text(max_size=70) | json_values, max_size=18)
        | json_values,
        "payload": json_values,
        "extra": json_values,
    },
)
device_ids = st.text(max_size=70) | st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Any:
    tmp = tmp_path_factory.mktemp("props")
    env = {
        "IOTGW_REDIS_URL": redis_server.url,
        "IOTGW_STREAM_KEY": "test:props",
        "IOTGW_SPOOL_PATH": str(tmp / "spool.db"),
        "IOTGW_HTTP_MAX_BODY_BYTES": "4096",
        "IOTGW_AUTH_MODE": "none",
    }
    with TestClient(app=create_app(load_settings(IngestHttpSettings, env))) as c:
        yield c


def _check(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) >= {"code", "message"}, body


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(device=device_ids, body=readings)
def test_arbitrary_readings_never_5xx(client: Any, device: str, body: dict[str, Any]) -> None:
    text = json.dumps(body, allow_nan=True)
    _check(
        client.post(
            f"/v1/ingest/{quote(device, safe='')}",
            content=text,
            headers={"Content-Type": "application/json"},
        )
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=json_values | st.lists(readings, max_size=5))
def test_arbitrary_batches_never_5xx(client: Any, body: Any) -> None:
    text = json.dumps(body, allow_nan=True)
    _check(
        client.post(
            "/v1/ingest/dev/batch", content=text, headers={"Content-Type": "application/json"}
        )
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=st.binary(max_size=300),
    ctype=st.sampled_from(["application/json", "text/plain", "", "application/vnd.x+json"]),
)
def test_arbitrary_bytes_never_5xx(client: Any, raw: bytes, ctype: str) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    _check(client.post("/v1/ingest/dev", content=raw, headers=headers))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.text(max_size=60))
def test_arbitrary_paths_never_5xx(client: Any, path: str) -> None:
    response = client.post(
        "/" + quote(path, safe="/"), content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert response.status_code < 500
