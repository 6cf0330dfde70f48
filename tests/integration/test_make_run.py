"""`make run`'s supervisor: the stack comes up, a dead service restarts, Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.procs import Managed, free_port, wait_port
from tests.support.stack import outbox_records, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STARTED = re.compile(r"started ([\w-]+) \(pid (\d+)\)")


def started(log: str) -> list[tuple[str, int]]:
    return [(name, int(pid)) for name, pid in STARTED.findall(log)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_supervised_stack_restarts_a_dead_service_and_stops_cleanly(tmp_path: Path) -> None:
    http_port = free_port()
    env = {
        "IOTGW_RUN_REDIS_PORT": str(free_port()),
        "IOTGW_RUN_MQTT_PORT": str(free_port()),
        "IOTGW_RUN_MQTT_TLS_PORT": str(free_port()),
        "IOTGW_RUN_MQTT_CERT_PORT": str(free_port()),
        "IOTGW_HTTP_PORT": str(http_port),
        "IOTGW_METRICS_PORT": "0",
        "IOTGW_MQTT_METRICS_PORT": "0",
    }
    supervisor = Managed(
        "supervisor",
        [sys.executable, "-m", "iotgw_supervisor", "--root", str(tmp_path)],
        tmp_path,
        env,
    ).start()
    try:
        wait_port(http_port, timeout_s=60, proc=supervisor.proc)
        device = json.loads((tmp_path / "var" / "dev-device.json").read_text())
        url = f"http://127.0.0.1:{http_port}/v1/ingest/{device['device_id']}"
        auth = {"Authorization": f"Bearer {device['http_token']}"}

        def post(seq: int) -> None:
            r = httpx.post(url, json={"seq": seq, "metrics": {"t": seq}}, headers=auth, timeout=10)
            assert r.status_code == 202, r.text

        outbox = tmp_path / "var" / "outbox"
        post(1)
        wait_until(lambda: len(outbox_records(outbox)) == 1, 30, "first record delivered")

        forwarder = dict(started(supervisor.log_text()))["forwarder"]
        os.kill(forwarder, signal.SIGKILL)
        wait_until(
            lambda: sum(n == "forwarder" for n, _ in started(supervisor.log_text())) == 2,
            30,
            "the forwarder started again",
        )
        post(2)
        wait_until(lambda: len(outbox_records(outbox)) == 2, 30, "delivered after the restart")

        children = [pid for _, pid in started(supervisor.log_text())]
        assert {n for n, _ in started(supervisor.log_text())} >= {
            "redis",
            "mosquitto",
            "ingest-http",
            "ingest-mqtt",
            "forwarder",
        }
        assert supervisor.proc is not None
        supervisor.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert supervisor.proc.wait(60) == 0
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if alive(pid)], "a process outlived make run"
        assert "all stopped" in supervisor.log_text()
    finally:
        if supervisor.proc is not None and supervisor.proc.poll() is None:
            supervisor.proc.send_signal(signal.SIGINT)  # it stops its children in order
            supervisor.stop(timeout_s=60)
