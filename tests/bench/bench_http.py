"""HTTP ingest throughput and latency at 64 connections, against a no-op of the same server.

Starts redis-server and the HTTP ingest (with its /bench/noop ceiling) as
processes in a scratch directory and drives them with wrk (64 connections,
one client thread, a Lua script giving every request its own seq). Runs:
the no-op endpoint and durable ingest with the forwarder stopped (an uplink
outage: records pile up in the spool), alternating in ``BENCH_HTTP_ROUNDS``
pairs (3; the ratio is the median of the pairs', since these machines
change speed from one run to the next); a shorter pair in which ingest is
sent the first round's readings again, all answered as duplicates (what
the same requests cost when nothing is stored); durable ingest while the forwarder
drains into the file sink on the same two cores. A last run,
the durability floor (`POST /bench/commit`: the body stored as it came
through the same group commit and stream hand-off, without validation,
envelope, authentication or metrics), shows what the commit mechanics alone
cost in this process. Figures: requests/s and p50/p99 of each, the ratios to
the no-op, and the CPU time of the whole machine per request.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.bench import service_env
from tests.bench.clock import Clock, OutboxLines, with_children
from tests.support.procs import Managed, RedisServer, free_port, python_service, wait_port
from tests.support.stack import wait_until

CONNECTIONS = 64
DURATION_S = 15
ROUNDS = int(os.environ.get("BENCH_HTTP_ROUNDS", "3"))  # no-op / ingest-alone pairs
WARMUP_S = 3


def _placement() -> tuple[str, str] | None:
    """With BENCH_HTTP_PIN=1 (and two CPUs or more): the HTTP event loop's CPU and
    the CPUs of everything else, as the service's IOTGW_HTTP_LOOP_CPUS and
    IOTGW_HTTP_WORKER_CPUS take them. The loop alone on one CPU, and its spool
    writer process, redis-server, the forwarder and wrk on the others, for the
    no-op and ingest alike. None by default: the figures are those of the
    service's default placement (the kernel's; docs/performance.md, tenth
    sitting)."""
    cpus = sorted(os.sched_getaffinity(0))
    if os.environ.get("BENCH_HTTP_PIN", "0") != "1" or len(cpus) < 2:
        return None
    return str(cpus[0]), ",".join(str(cpu) for cpu in cpus[1:])


PLACEMENT = _placement()

# Every endpoint gets the same client work (a fresh body with its own seq per
# request), so the client's CPU on this 2-core machine weighs on all alike.
# 64 devices take turns; each counts its own seq up by one, as a device does.
LUA = """
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format(
    '{"seq":%d,"metrics":{"temp_c":21.5,"humidity":40.2},"tags":{"site":"AAL"}}',
    math.floor(counter / 64))
  return wrk.format("POST", PATH_%s, nil, body)
end
wrk.headers["Content-Type"] = "application/json"
"""
LUA_INGEST = LUA.replace("PATH_%s", '"/v1/ingest/dev-" .. (counter % 64)')
LUA_NOOP = LUA.replace("PATH_%s", '"/bench/noop"')
LUA_COMMIT = LUA.replace("PATH_%s", '"/bench/commit"')
ROUND_SEQS = 10**8  # requests a round may send before the next round's seqs begin


def _ingest_lua(start: int) -> str:
    """The ingest script with its request counter (and so every seq) starting at ``start``."""
    return LUA_INGEST.replace("counter = 0", f"counter = {start}")


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(
    url: str,
    script: Path,
    duration_s: int,
    processes: dict[str, int] | None = None,
    label: str = "",
) -> dict[str, float]:
    """Run wrk; parse requests/s, p50, p99, non-2xx answers; machine CPU per request.

    ``processes`` (name -> pid): their CPU per request is printed too.
    """
    clock = Clock(processes).start()
    out = subprocess.run(
        [
            *(["taskset", "-c", PLACEMENT[1]] if PLACEMENT else []),
            *("wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration_s}s", "--latency"),
            *("-s", str(script), url),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration_s + 60,
    ).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    cpu_us = clock.stop(requests)[1]
    clock.report(label or script.stem, "request")
    return {
        "cpu_us": cpu_us,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "requests": requests,
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


def _repeats(
    base: str, work: Path, first_round: float, server: dict[str, int]
) -> tuple[dict[str, float], dict[str, float]]:
    """A no-op run, then ingest sent the first round's readings again: each is
    answered as a duplicate, with nothing stored or handed to the stream. The
    event loop runs the same code as for a fresh reading, so the gap between
    this ratio and ingest alone's is what storing costs on these two cores
    (docs/performance.md, eighth sitting)."""
    # Half as long: the first round's seqs last unless this runs at twice its rate.
    duration_s = DURATION_S // 2
    noop = wrk(base + "/bench/noop", work / "noop.lua", duration_s, server)
    (work / "repeats.lua").write_text(_ingest_lua(0))  # the first round's seqs
    repeats = wrk(base, work / "repeats.lua", duration_s, server, "ingest, repeats")
    if repeats["requests"] > first_round:
        print("  (the repeats ran past the first round's seqs: some readings were new)")
    print(
        f"repeats: no-op {noop['rps']:,.0f} req/s, ingest of repeats {repeats['rps']:,.0f}"
        f" req/s, ratio {repeats['rps'] / noop['rps']:.3f}"
    )
    return noop, repeats


def _median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run of median requests/s (its latencies with it)."""
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def _wait_delivered(lines: OutboxLines, count: int, work: Path, forwarder: Managed) -> None:
    """Wait (at most 300 s) until ``count`` records are in the outbox; if they are not,
    say where the rest are (spool states, the forwarder's state and log) before failing."""
    try:
        wait_until(lambda: lines() >= count, 300, f"{count} records in the outbox")
    except AssertionError:
        with sqlite3.connect(f"file:{work / 'spool.db'}?mode=ro", uri=True) as db:
            states = dict(db.execute("SELECT state, count(*) FROM records GROUP BY state"))
        code = forwarder.proc.poll() if forwarder.proc is not None else None
        print(
            f"outbox has {lines()} of {count}; spool records by state (0 Enqueued,"
            f" 1 InFlight, 2 Acked, 3 Dead): {states}; forwarder exit code: {code}"
        )
        print("forwarder log (end):\n" + forwarder.log_text()[-4000:])
        raise


def run() -> dict[str, float]:
    """Measure; return the figures."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run `make bench` (it installs it)")
    with tempfile.TemporaryDirectory(prefix="iotgw-bench-") as tmp:
        work = Path(tmp)
        redis = RedisServer(work / "redis").start()
        port = free_port()
        env = service_env(
            work,
            redis.url,
            IOTGW_HTTP_PORT=str(port),
            IOTGW_HTTP_BENCH_ENDPOINTS="true",
            IOTGW_AUTH_MODE="none",  # the figures so far were taken without device auth
        )
        if PLACEMENT is not None:
            loop_cpu, others = PLACEMENT
            for task in os.listdir(f"/proc/{redis.managed.pid}/task"):
                os.sched_setaffinity(int(task), {int(cpu) for cpu in others.split(",")})
            env.update(IOTGW_HTTP_LOOP_CPUS=loop_cpu, IOTGW_HTTP_WORKER_CPUS=others)
            print(f"placement: HTTP event loop on CPU {loop_cpu}, all else on CPU {others}")
        ingest = python_service("iotgw_ingest_http", "ingest-http", work, env).start()
        # The forwarder's own event loop stays off the HTTP loop's CPU.
        fwd_env = {**env, "IOTGW_FORWARDER_LOOP_CPUS": PLACEMENT[1]} if PLACEMENT else env
        forwarder = python_service("iotgw_forwarder", "forwarder", work, fwd_env)
        try:
            wait_port(port, proc=ingest.proc)
            base = f"http://127.0.0.1:{port}"
            (work / "noop.lua").write_text(LUA_NOOP)
            wrk(base + "/bench/noop", work / "noop.lua", WARMUP_S)
            server = {**with_children("ingest-http", ingest.pid), "redis": redis.managed.pid}
            # No-op and ingest alternate in pairs: the machine's speed drifts between runs.
            noops: list[dict[str, float]] = []
            alones: list[dict[str, float]] = []
            for n in range(ROUNDS):
                noops.append(wrk(base + "/bench/noop", work / "noop.lua", DURATION_S, server))
                # The uplink down: records only pile up in the spool (the forwarder is off).
                # Each round's devices count on from where the last one stopped.
                (work / "ingest.lua").write_text(_ingest_lua(n * ROUND_SEQS))
                alones.append(wrk(base, work / "ingest.lua", DURATION_S, server))
                print(
                    f"round {n + 1}: no-op {noops[-1]['rps']:,.0f} req/s, ingest alone"
                    f" {alones[-1]['rps']:,.0f} req/s, ratio"
                    f" {alones[-1]['rps'] / noops[-1]['rps']:.3f}"
                )
            ratios = [a["rps"] / b["rps"] for a, b in zip(alones, noops, strict=True)]
            noop = _median_run(noops)
            alone = _median_run(alones)
            stored = sum(a["requests"] - a["non_2xx"] for a in alones)
            repeats_noop, repeats = _repeats(base, work, alones[0]["requests"], server)
            forwarder.start()
            lines = OutboxLines(work / "outbox")  # the polls read only what is new
            _wait_delivered(lines, stored, work, forwarder)
            # The uplink up: the forwarder drains into the file sink while ingest runs.
            (work / "ingest.lua").write_text(_ingest_lua(ROUNDS * ROUND_SEQS))
            durable = wrk(
                base,
                work / "ingest.lua",
                DURATION_S,
                {**server, "forwarder": forwarder.pid},
                "ingest + forwarder",
            )
            accepted = stored + durable["requests"] - durable["non_2xx"]
            started = time.monotonic()
            _wait_delivered(lines, accepted, work, forwarder)
            drain_s = time.monotonic() - started
            # The floor, with the uplink down again as for "ingest alone".
            forwarder.stop()
            (work / "commit.lua").write_text(LUA_COMMIT)
            floor = wrk(base + "/bench/commit", work / "commit.lua", DURATION_S, server)
        finally:
            ingest.stop()
            forwarder.stop()
            redis.stop()
    return {
        "http_noop_rps": round(noop["rps"], 1),
        "http_noop_p50_ms": noop["p50_ms"],
        "http_noop_p99_ms": noop["p99_ms"],
        "http_ingest_rps": round(durable["rps"], 1),
        "http_ingest_p50_ms": durable["p50_ms"],
        "http_ingest_p99_ms": durable["p99_ms"],
        "http_ingest_non_2xx": durable["non_2xx"],
        "http_ingest_to_noop_ratio": round(durable["rps"] / noop["rps"], 3),
        "http_ingest_alone_rps": round(alone["rps"], 1),
        "http_ingest_alone_p50_ms": alone["p50_ms"],
        "http_ingest_alone_p99_ms": alone["p99_ms"],
        "http_ingest_alone_to_noop_ratio": round(statistics.median(ratios), 3),
        "http_ingest_alone_to_noop_ratio_min": round(min(ratios), 3),
        "http_ingest_alone_to_noop_ratio_max": round(max(ratios), 3),
        "http_outbox_catch_up_s": round(drain_s, 2),
        "http_ingest_repeats_rps": round(repeats["rps"], 1),
        "http_ingest_repeats_to_noop_ratio": round(repeats["rps"] / repeats_noop["rps"], 3),
        "http_commit_floor_rps": round(floor["rps"], 1),
        "http_commit_floor_p99_ms": floor["p99_ms"],
        "http_commit_floor_to_noop_ratio": round(floor["rps"] / noop["rps"], 3),
        "http_placement_pinned": float(PLACEMENT is not None),
        "http_noop_machine_cpu_us_per_req": round(noop["cpu_us"], 1),
        "http_ingest_alone_machine_cpu_us_per_req": round(alone["cpu_us"], 1),
        "http_commit_floor_machine_cpu_us_per_req": round(floor["cpu_us"], 1),
    }
