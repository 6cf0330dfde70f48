"""Drive the HTTP app in-process, for ``bench_instr`` (run under callgrind).

``python -m tests.bench.asgi_driver ENDPOINT[,ENDPOINT...] REQUESTS_PER_CLIENT``

Starts redis-server and the app's lifespan (so the real spool writer process
and stream hand-off run), then for each endpoint sends requests straight to
the ASGI app from 64 concurrent clients, as 64 devices each counting its own
seq, the way `make bench BENCH=http`'s wrk script does. uvicorn and the
sockets are left out: they cost the same for every endpoint. Around each
endpoint's requests, callgrind's collection is switched on and the counts
dumped (``callgrind_control``), one dump per endpoint, named after it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop
from iotgw_core.process import tune_gc
from iotgw_core.settings import load_settings
from iotgw_ingest_http.app import create_app
from iotgw_ingest_http.settings import IngestHttpSettings

from tests.bench import service_env
from tests.support.procs import RedisServer

CLIENTS = 64
PATHS = {"noop": "/bench/noop", "commit": "/bench/commit"}  # ingest: /v1/ingest/dev-N


def _callgrind(*args: str) -> None:
    subprocess.run(
        ["callgrind_control", *args, str(os.getpid())], check=True, stdout=subprocess.DEVNULL
    )


def _scope(path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _drive(work: Path, endpoints: list[str], per_client: int) -> None:
    redis = RedisServer(work / "redis").start()
    try:
        env = service_env(
            work,
            redis.url,
            IOTGW_HTTP_BENCH_ENDPOINTS="true",
            IOTGW_AUTH_MODE="none",
            IOTGW_LOG_LEVEL="ERROR",
        )
        app: Any = create_app(load_settings(IngestHttpSettings, env))  # called as a bare ASGI app
        tune_gc()
        inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        started, stopped = asyncio.Event(), asyncio.Event()

        async def receive_lifespan() -> dict[str, str]:
            return await inbox.get()

        async def send_lifespan(message: dict[str, Any]) -> None:
            if message["type"].endswith(".failed"):
                raise RuntimeError(f"lifespan: {message}")
            {"lifespan.startup.complete": started, "lifespan.shutdown.complete": stopped}[
                message["type"]
            ].set()

        lifespan = asyncio.create_task(
            app(
                {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                receive_lifespan,
                send_lifespan,
            )
        )
        await inbox.put({"type": "lifespan.startup"})
        await started.wait()
        seqs = [0] * CLIENTS

        async def client(endpoint: str, device: int, requests: int) -> None:
            for _ in range(requests):
                seqs[device] += 1
                body = (
                    b'{"seq":%d,"metrics":{"temp_c":21.5,"humidity":40.2},"tags":{"site":"AAL"}}'
                    % seqs[device]
                )
                path = PATHS.get(endpoint, f"/v1/ingest/dev-{device}")
                statuses: list[int] = []

                async def receive(body: bytes = body) -> dict[str, Any]:
                    return {"type": "http.request", "body": body, "more_body": False}

                async def send(message: dict[str, Any], statuses: list[int] = statuses) -> None:
                    if message["type"] == "http.response.start":
                        statuses.append(message["status"])

                await app(_scope(path, body), receive, send)
                if statuses != [202]:
                    raise RuntimeError(f"{endpoint}: answered {statuses}, not 202")

        for endpoint in endpoints:  # warm-up: first calls, caches, the writer process
            await asyncio.gather(*(client(endpoint, d, 3) for d in range(CLIENTS)))
        for endpoint in endpoints:
            _callgrind("--zero")
            _callgrind("--instr=on")
            await asyncio.gather(*(client(endpoint, d, per_client) for d in range(CLIENTS)))
            _callgrind("--instr=off")
            _callgrind(f"--dump={endpoint}")
        await inbox.put({"type": "lifespan.shutdown"})
        await stopped.wait()
        await lifespan
    finally:
        redis.stop()


def main(argv: list[str]) -> int:
    """Drive the endpoints named in ``argv[0]``, ``argv[1]`` requests per client."""
    endpoints, per_client = argv[0].split(","), int(argv[1])
    with tempfile.TemporaryDirectory(prefix="iotgw-asgi-") as tmp:
        uvloop.install()
        asyncio.run(_drive(Path(tmp), endpoints, per_client))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
