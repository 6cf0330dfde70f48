"""Fixtures: real redis-server, and the gateway's services as processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import RedisServer
from tests.support.stack import Stack


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart by their own stream key."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def stream_key() -> str:
    """A stream key of this test's own."""
    return f"test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def gateway_env(tmp_path: Path, redis_server: RedisServer, stream_key: str) -> dict[str, str]:
    """IOTGW_* settings pointing the services at this test's spool, stream and outbox."""
    return {
        "IOTGW_REDIS_URL": redis_server.url,
        "IOTGW_STREAM_KEY": stream_key,
        "IOTGW_SPOOL_PATH": str(tmp_path / "spool" / "spool.db"),
        "IOTGW_OUTBOX_DIR": str(tmp_path / "outbox"),
        "IOTGW_METRICS_PORT": "0",
        "IOTGW_GATEWAY_ID": "test-gw",
        "IOTGW_RECONCILE_INTERVAL_S": "1",
        "IOTGW_RECONCILE_GRACE_S": "1",
        "IOTGW_RETRY_BASE_S": "0.05",
        "IOTGW_RETRY_CAP_S": "0.5",
        "IOTGW_UNAVAILABLE_CAP_S": "0.5",
        "IOTGW_RECLAIM_IDLE_S": "2",
        # The HTTP contract tests post without credentials: authentication is tested
        # on its own in tests/integration/test_auth_http.py.
        "IOTGW_AUTH_MODE": "none",
    }


@pytest.fixture
def stack(gateway_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    """ingest-http + forwarder as processes, on this test's spool/stream/outbox."""
    running = Stack(gateway_env, tmp_path).start()
    yield running
    running.stop()
