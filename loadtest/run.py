"""``make loadtest``: start a stack on loopback, onboard devices, run Locust headless, judge.

    python -m loadtest.run [--users 20] [--duration 30] [--phases http,mqtt]

The stack is the one the tests use (tests/support): redis-server, mosquitto
with the edge config (TLS, registry-generated password and ACL files), the
HTTP ingest with device authentication on, the MQTT ingest and the forwarder
into the file sink, all on free 127.0.0.1 ports under var/loadtest/stack/.
Each phase runs Locust for ``--duration`` seconds with at most ``--users``
users (one onboarded device each) and writes its CSV to
var/loadtest/<phase>_stats.csv; the run fails (exit 1) when a phase's failure
ratio or p95 is over its limit. Every knob has an ``IOTGW_LOADTEST_*`` variable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from iotgw_cli.devices import add_device  # noqa: E402
from iotgw_core.registry import Limits as RateLimits  # noqa: E402

from loadtest.thresholds import (  # noqa: E402
    Limits,
    Verdict,
    expected_records,
    judge,
    with_delivery,
)
from tests.support.mosquitto import MosquittoBroker, mqtt_ingest_service  # noqa: E402
from tests.support.procs import RedisServer  # noqa: E402
from tests.support.stack import Stack, outbox_records, wait_until  # noqa: E402

LOCUSTFILES = {"http": "loadtest/locustfile_http.py", "mqtt": "loadtest/locustfile_mqtt.py"}


def _env(name: str, default: str) -> str:
    return os.environ.get(f"IOTGW_LOADTEST_{name}", default)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtest.run", description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=int(_env("USERS", "20")))
    p.add_argument("--spawn-rate", type=float, default=float(_env("SPAWN_RATE", "10")))
    p.add_argument("--duration", type=int, default=int(_env("DURATION", "30")), help="s/phase")
    p.add_argument("--phases", default=_env("PHASES", "http,mqtt"))
    p.add_argument("--out", type=Path, default=Path(_env("OUT", str(REPO / "var" / "loadtest"))))
    p.add_argument(
        "--max-failure-ratio", type=float, default=float(_env("MAX_FAILURE_RATIO", "0.01"))
    )
    p.add_argument("--http-p95-ms", type=float, default=float(_env("HTTP_P95_MS", "500")))
    p.add_argument("--mqtt-p95-ms", type=float, default=float(_env("MQTT_P95_MS", "1000")))
    p.add_argument("--min-requests", type=int, default=int(_env("MIN_REQUESTS", "100")))
    args = p.parse_args(argv)
    if not 1 <= args.users <= 200:
        p.error("--users must be within 1..200 (a bounded load on a shared machine)")
    if not 5 <= args.duration <= 300:
        p.error("--duration must be within 5..300 seconds")
    unknown = set(args.phases.split(",")) - set(LOCUSTFILES)
    if unknown:
        p.error(f"unknown phases {sorted(unknown)}; known: {sorted(LOCUSTFILES)}")
    return args


def run_locust(phase: str, args: argparse.Namespace, host: str, devices_file: Path) -> Verdict:
    """One headless Locust run; its verdict from the CSV it wrote."""
    prefix = args.out / phase
    for old in args.out.glob(f"{phase}_*.csv"):
        old.unlink()
    cmd = [
        *(sys.executable, "-m", "locust", "-f", LOCUSTFILES[phase], "--headless"),
        *("-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.duration}s"),
        *("--csv", str(prefix), "--host", host, "--only-summary"),
        *("--exit-code-on-error", "0", "--stop-timeout", "5", "--loglevel", "WARNING"),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "IOTGW_LOADTEST_DEVICES": str(devices_file),
    }
    print(f"== {phase}: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=False, timeout=args.duration + 120)
    p95 = args.http_p95_ms if phase == "http" else args.mqtt_p95_ms
    limits = Limits(args.max_failure_ratio, p95, args.min_requests)
    return judge(Path(f"{prefix}_stats.csv"), limits, phase)


def settled_count(outbox: Path, quiet_s: float = 2.0, timeout_s: float = 60.0) -> int:
    """Envelopes in the outbox once the count has not moved for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    count, since = len(outbox_records(outbox)), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = len(outbox_records(outbox))
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return count


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "stack"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    redis = RedisServer(work / "redis").start()
    broker = MosquittoBroker(work / "broker", cert_listener=False).start()
    stack: Stack | None = None
    ingest_mqtt = None
    verdicts: list[Verdict] = []
    try:
        # One device per user, with a rate limit above what one user sends (a 429 is a failure).
        limits = RateLimits(rate_per_s=1000.0, burst=2000)
        devices = [
            add_device(broker.paths, f"lt-{i:03d}", "load", "lt", limits=limits)
            for i in range(args.users)
        ]
        time.sleep(0.3)  # the broker re-reads its password file on the SIGHUP
        env = {
            **broker.env(),
            "IOTGW_REDIS_URL": redis.url,
            "IOTGW_STREAM_KEY": f"loadtest:{uuid.uuid4().hex[:8]}",
            "IOTGW_SPOOL_PATH": str(work / "spool" / "spool.db"),
            "IOTGW_OUTBOX_DIR": str(work / "outbox"),
            "IOTGW_METRICS_PORT": "0",
            "IOTGW_GATEWAY_ID": "loadtest",
            "IOTGW_AUTH_MODE": "required",
        }
        stack = Stack(env, work).start()
        ingest_mqtt = mqtt_ingest_service(env, work).start()
        wait_until(lambda: "subscribing" in ingest_mqtt.log_text().lower(), 30, "MQTT ingest")
        devices_file = args.out / "devices.json"
        devices_file.write_text(
            json.dumps(
                {
                    "http": {"base_url": stack.base_url},
                    "mqtt": {
                        "host": "127.0.0.1",
                        "port": broker.device_port,
                        "ca_file": broker.ca_file,
                    },
                    "devices": devices,
                },
                indent=2,
            )
        )
        devices_file.chmod(0o600)
        outbox = Path(env["IOTGW_OUTBOX_DIR"])
        for phase in args.phases.split(","):
            before = settled_count(outbox)
            verdict = run_locust(phase, args, stack.base_url, devices_file)
            # Every record the gateway acknowledged reaches the sink once the load stops.
            delivered = settled_count(outbox) - before
            expected = expected_records(phase, args.out / f"{phase}_stats.csv")
            print(f"{phase}: {delivered} records delivered, {expected} acknowledged", flush=True)
            verdicts.append(with_delivery(verdict, expected, delivered))
    finally:
        if ingest_mqtt is not None:
            ingest_mqtt.stop()
        if stack is not None:
            stack.stop()
        broker.stop()
        redis.stop()
    summary = [{**v.__dict__, "ok": v.ok} for v in verdicts]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("== thresholds")
    for verdict in verdicts:
        print(verdict.line())
    return 0 if verdicts and all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
