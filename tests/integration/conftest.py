"""In-process app and forwarder on a real redis-server and real spool files."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from iotgw_core.settings import load_settings
from iotgw_ingest_http.app import create_app
from iotgw_ingest_http.settings import IngestHttpSettings
from litestar.testing import AsyncTestClient

from tests.support.procs import Managed, python_service

AppFactory = Callable[..., contextlib.AbstractAsyncContextManager[AsyncTestClient[Any]]]


@pytest.fixture
def make_client(gateway_env: dict[str, str]) -> AppFactory:
    """Open the HTTP app (lifespan and all) with extra IOTGW_* settings."""

    @contextlib.asynccontextmanager
    async def factory(**overrides: str) -> AsyncIterator[AsyncTestClient[Any]]:
        env = {**gateway_env, **{f"IOTGW_{k.upper()}": v for k, v in overrides.items()}}
        app = create_app(load_settings(IngestHttpSettings, env))
        async with AsyncTestClient(app=app) as client:
            yield client

    return factory


@pytest.fixture
async def client(make_client: AppFactory) -> AsyncIterator[AsyncTestClient[Any]]:
    """The HTTP app with default settings."""
    async with make_client() as c:
        yield c


@pytest.fixture
def run_forwarder(
    gateway_env: dict[str, str], tmp_path: Path
) -> Callable[..., contextlib.AbstractContextManager[Managed]]:
    """Run the forwarder as a process on the test's spool and stream."""

    @contextlib.contextmanager
    def runner(**overrides: str) -> Iterator[Managed]:
        env = {**gateway_env, **{f"IOTGW_{k.upper()}": v for k, v in overrides.items()}}
        proc = python_service("iotgw_forwarder", "forwarder", tmp_path, env).start()
        try:
            yield proc
        finally:
            proc.stop()

    return runner
