"""The gateway's own services as processes, and readers of what they produced."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .procs import free_port, python_service, wait_port


def outbox_records(outbox: Path) -> list[dict[str, Any]]:
    """Every envelope in the file sink's outbox, in file order."""
    out: list[dict[str, Any]] = []
    for path in sorted(outbox.glob("outbox-*.jsonl")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` until true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class Stack:
    """ingest-http and forwarder processes sharing one spool, stream and outbox."""

    def __init__(self, env: dict[str, str], log_dir: Path, http_port: int | None = None):
        self.http_port = http_port or free_port()
        self.env = {**env, "IOTGW_HTTP_PORT": str(self.http_port)}
        self.outbox = Path(env["IOTGW_OUTBOX_DIR"])
        self.ingest = python_service("iotgw_ingest_http", "ingest-http", log_dir, self.env)
        self.forwarder = python_service("iotgw_forwarder", "forwarder", log_dir, self.env)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start_ingest(self) -> None:
        """Start the HTTP ingest and wait until it listens."""
        self.ingest.start()
        wait_port(self.http_port, proc=self.ingest.proc)

    def start_forwarder(self) -> None:
        """Start the forwarder."""
        self.forwarder.start()

    def start(self) -> Stack:
        """Both services."""
        self.start_ingest()
        self.start_forwarder()
        return self

    def stop(self) -> None:
        """Stop both (SIGTERM, they drain)."""
        for proc in (self.ingest, self.forwarder):
            proc.stop()

    def records(self) -> list[dict[str, Any]]:
        """What reached the outbox."""
        return outbox_records(self.outbox)

    def wait_outbox(self, count: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` envelopes are in the outbox."""
        wait_until(lambda: len(self.records()) >= count, timeout_s, f"{count} records in outbox")
        return self.records()

    def client(self) -> httpx.Client:
        """An HTTP client for the ingest service."""
        return httpx.Client(base_url=self.base_url, timeout=10)
