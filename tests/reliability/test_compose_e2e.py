"""The Compose stack end to end, on a host with a Docker engine.

Brings compose.yaml up (the gateway alone, file sink), sends readings over
HTTP, kills and pauses containers with the `docker` SDK, and checks that every
acknowledged reading reaches the outbox. Skipped, with the reason, where no
engine runs (as on the development machines and CI of this project): the
engine-free checks of the same files are in tests/unit/test_compose.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.procs import REPO

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _engine() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        return client
    except Exception as exc:
        pytest.skip(f"no Docker engine reachable ({type(exc).__name__}): compose e2e needs one")


def _compose(project: str, *args: str) -> None:
    subprocess.run(
        ["docker", "compose", "-p", project, "-f", str(REPO / "compose.yaml"), *args],
        cwd=REPO,
        check=True,
        timeout=900,
        env={**os.environ, "COMPOSE_FILE": "compose.yaml", "HTTP_INGEST_PORT": "18000"},
    )


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    client = _engine()
    secrets = REPO / "secrets"
    if not (secrets / "mqtt-server.crt").exists():
        pytest.skip("secrets/ is not set up (docs/deploy-pi.md, 'Secrets')")
    project = f"iotgw-e2e-{uuid.uuid4().hex[:6]}"
    _compose(project, "up", "-d", "--build", "--wait", "--wait-timeout", "300")
    try:
        yield client, project
    finally:
        _compose(project, "down", "-v", "--timeout", "30")


def _container(client: Any, project: str, service: str) -> Any:
    labels = [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]
    found = client.containers.list(filters={"label": labels})
    assert found, f"no container for {service}"
    return found[0]


def _outbox_ids(client: Any, project: str) -> set[str]:
    forwarder = _container(client, project, "forwarder")
    code, out = forwarder.exec_run(["sh", "-c", "cat /var/lib/iotgw/outbox/*.jsonl || true"])
    assert code == 0
    return {json.loads(line)["id"] for line in out.decode().splitlines() if line.strip()}


def _send(n: int, device: str) -> list[str]:
    ids: list[str] = []
    with httpx.Client(base_url="http://127.0.0.1:18000", timeout=10) as http:
        for seq in range(n):
            try:
                resp = http.post(f"/v1/ingest/{device}", json={"seq": seq, "metrics": {"t": seq}})
            except httpx.HTTPError:
                continue
            if resp.status_code == 202:
                ids.append(resp.json()["id"])
    return ids


def _undelivered(client: Any, project: str, ids: list[str], timeout_s: float = 120) -> set[str]:
    """Acknowledged ids still missing from the outbox after waiting up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    missing = set(ids) - _outbox_ids(client, project)
    while missing and time.monotonic() < deadline:
        time.sleep(1)
        missing = set(ids) - _outbox_ids(client, project)
    return missing


def test_kill_forwarder_and_redis_nothing_lost(compose_stack: tuple[Any, str]) -> None:
    client, project = compose_stack
    ids = _send(200, "e2e-kill")
    _container(client, project, "forwarder").kill()
    _container(client, project, "redis").kill()
    ids += _send(200, "e2e-kill")
    _compose(project, "up", "-d", "--wait", "--wait-timeout", "120")
    assert ids, "no reading was acknowledged"
    missing = _undelivered(client, project, ids)
    assert not missing, f"{len(missing)} acknowledged records never reached the outbox"


def test_paused_redis_then_resumed_nothing_lost(compose_stack: tuple[Any, str]) -> None:
    client, project = compose_stack
    redis = _container(client, project, "redis")
    redis.pause()
    try:
        ids = _send(100, "e2e-pause")
    finally:
        redis.unpause()
    ids += _send(100, "e2e-pause")
    assert ids, "no reading was acknowledged"
    missing = _undelivered(client, project, ids)
    assert not missing, f"{len(missing)} acknowledged records never reached the outbox"


def test_containers_run_as_non_root_read_only(compose_stack: tuple[Any, str]) -> None:
    client, project = compose_stack
    for service in ("ingest-http", "forwarder", "redis", "mosquitto"):
        attrs = _container(client, project, service).attrs
        assert attrs["HostConfig"]["ReadonlyRootfs"] is True
        assert attrs["Config"]["User"] not in ("", "0", "root")
