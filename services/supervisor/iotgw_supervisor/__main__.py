"""Run the whole stack as plain processes (``make run``): Redis, then the services.

Logs of every process go to this terminal, prefixed with its name. A service
that dies is started again with a growing delay, as compose's
``restart: unless-stopped`` would. Ctrl-C (or SIGTERM) stops the services
first (each drains), then Redis; nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Program:
    """One supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    restart: bool = True
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0


def log(name: str, line: str) -> None:
    """Write one prefixed line to the terminal."""
    sys.stdout.write(f"{name:<12}| {line}\n")
    sys.stdout.flush()


async def pump(name: str, stream: asyncio.StreamReader) -> None:
    """Copy a child's output to the terminal, line by line."""
    while line := await stream.readline():
        log(name, line.decode(errors="replace").rstrip())


async def wait_redis(port: int, timeout_s: float = 15.0) -> None:
    """Wait until Redis answers PING on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PING\r\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.readline(), 1.0)
            writer.close()
            if reply.startswith(b"+PONG"):
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"redis-server did not answer on port {port}")


class Supervisor:
    """Starts programs in order, restarts the ones that die, stops them in reverse."""

    def __init__(self, programs: list[Program]) -> None:
        self.programs = programs
        self.stopping = asyncio.Event()
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self, program: Program) -> None:
        """Spawn one program with its output piped to the terminal."""
        program.process = await asyncio.create_subprocess_exec(
            *program.argv,
            env={**os.environ, **program.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
        )
        assert program.process.stdout is not None
        task = asyncio.create_task(pump(program.name, program.process.stdout))
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)
        log("supervisor", f"started {program.name} (pid {program.process.pid})")

    async def watch(self, program: Program) -> None:
        """Restart ``program`` whenever it exits, until the stack stops."""
        while not self.stopping.is_set():
            assert program.process is not None
            started = time.monotonic()
            code = await program.process.wait()
            if self.stopping.is_set():
                return
            log("supervisor", f"{program.name} exited with {code}")
            if not program.restart:
                self.stopping.set()
                return
            if time.monotonic() - started > 60:
                program.restarts = 0
            delay = min(30.0, 0.5 * 2**program.restarts)
            program.restarts += 1
            log("supervisor", f"restarting {program.name} in {delay:.1f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return
            await self.start(program)

    async def stop_all(self, grace_s: float = 20.0) -> None:
        """SIGTERM in reverse start order; SIGKILL whatever outlives the grace period."""
        for program in reversed(self.programs):
            proc = program.process
            if proc is None or proc.returncode is not None:
                continue
            log("supervisor", f"stopping {program.name}")
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                log("supervisor", f"{program.name} did not stop in {grace_s}s: killing it")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


MQTT_LOCAL_PORT = int(os.environ.get("IOTGW_RUN_MQTT_PORT", "1884"))
MQTT_DEVICE_PORT = int(os.environ.get("IOTGW_RUN_MQTT_TLS_PORT", "8883"))
MQTT_CERT_PORT = int(os.environ.get("IOTGW_RUN_MQTT_CERT_PORT", "8884"))


def prepare_broker(root: Path, env: dict[str, str]) -> None:
    """Edge broker files under var/: CA, server cert, config; the dev device on first run."""
    cli = [sys.executable, "-m", "iotgw_cli"]
    run_env = {**os.environ, **env}
    subprocess.run(
        [
            *cli,
            "broker",
            "setup",
            "--local-port",
            str(MQTT_LOCAL_PORT),
            "--device-port",
            str(MQTT_DEVICE_PORT),
            "--cert-port",
            str(MQTT_CERT_PORT),
        ],
        check=True,
        cwd=root,
        env=run_env,
        stdout=subprocess.DEVNULL,
    )
    out = root / "var" / "dev-device.json"
    subprocess.run(
        [
            *cli,
            "devices",
            "dev",
            "--out",
            str(out),
            "--device-port",
            str(MQTT_DEVICE_PORT),
            "--cert-port",
            str(MQTT_CERT_PORT),
        ],
        check=True,
        cwd=root,
        env=run_env,
        stdout=subprocess.DEVNULL,
    )
    dev = json.loads(out.read_text())
    log(
        "supervisor",
        f"development device {dev['device_id']} (tenant {dev['tenant']},"
        f" site {dev['site']}); credentials in {out}:",
    )
    log(
        "supervisor",
        f"  mosquitto_pub -h 127.0.0.1 -p {MQTT_DEVICE_PORT} --cafile {dev['ca_file']}"
        f" -u {dev['username']} -P '{dev['password']}' -q 1"
        f' -t {dev["publish_topics"][0]} -m \'{{"metrics": {{"temp_c": 21.5}}}}\'',
    )
    log(
        "supervisor",
        f"  curl -H 'Authorization: Bearer {dev['http_token']}'"
        f" -H 'Content-Type: application/json' -d '{{\"metrics\": {{\"temp_c\": 21.5}}}}'"
        f" {dev['http_url']}",
    )


def build_programs(root: Path, redis_port: int) -> list[Program]:
    """Redis with its data under var/, then the gateway's services."""
    var = root / "var"
    for sub in ("redis", "spool", "outbox"):
        (var / sub).mkdir(parents=True, exist_ok=True)
    env = {
        "IOTGW_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "IOTGW_SPOOL_PATH": str(var / "spool" / "spool.db"),
        "IOTGW_OUTBOX_DIR": str(var / "outbox"),
        "IOTGW_VAR_DIR": str(var),
        "IOTGW_REGISTRY_PATH": str(var / "devices" / "registry.toml"),
        "IOTGW_QUARANTINE_PATH": str(var / "quarantine" / "quarantine.db"),
        "PYTHONUNBUFFERED": "1",
    }
    prepare_broker(root, env)
    mqtt_env = {
        **env,
        "IOTGW_MQTT_PORT": str(MQTT_LOCAL_PORT),
        "IOTGW_MQTT_PASSWORD_FILE": str(var / "mosquitto" / "iotgw-ingest.password"),
    }
    redis = Program(
        "redis",
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(redis_port),
            "--dir",
            str(var / "redis"),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
        ],
        restart=True,
    )
    python = sys.executable
    return [
        redis,
        Program("mosquitto", ["mosquitto", "-c", str(var / "mosquitto" / "mosquitto.conf")]),
        Program("ingest-http", [python, "-m", "iotgw_ingest_http"], env),
        Program("ingest-mqtt", [python, "-m", "iotgw_ingest_mqtt"], mqtt_env),
        Program("forwarder", [python, "-m", "iotgw_forwarder"], env),
    ]


async def run(root: Path, redis_port: int) -> int:
    """Start everything, wait for a signal, stop everything."""
    programs = build_programs(root, redis_port)
    supervisor = Supervisor(programs)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.stopping.set)
    watchers = []
    try:
        await supervisor.start(programs[0])
        await wait_redis(redis_port)
        for program in programs[1:]:
            await supervisor.start(program)
        watchers = [asyncio.create_task(supervisor.watch(p)) for p in programs]
        log(
            "supervisor",
            "stack up: HTTP ingest on http://127.0.0.1:8000, MQTT (TLS) on 127.0.0.1:"
            f"{MQTT_DEVICE_PORT}, outbox in var/outbox/",
        )
        await supervisor.stopping.wait()
    finally:
        log("supervisor", "shutting down")
        await supervisor.stop_all()
        for task in watchers:
            task.cancel()
    log("supervisor", "all stopped")
    return 0


def main() -> int:
    """Entry point of ``make run``."""
    parser = argparse.ArgumentParser(prog="iotgw_supervisor", description=__doc__)
    parser.add_argument("--root", default=".", help="directory holding var/ (default: .)")
    parser.add_argument(
        "--redis-port", type=int, default=int(os.environ.get("IOTGW_RUN_REDIS_PORT", "6390"))
    )
    args = parser.parse_args()
    return asyncio.run(run(Path(args.root).resolve(), args.redis_port))


if __name__ == "__main__":
    sys.exit(main())
