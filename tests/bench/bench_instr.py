"""Instructions the HTTP app executes per request, counted by callgrind.

Wall-clock ratios on these 2-core machines swing by +-0.1 between runs (the
machine's own speed drifts by tens of percent within minutes); the
instructions a request costs do not (the same to about 1% between runs). So a
change to the hot path is best judged here first, and by `make bench
BENCH=http` after. tests/bench/asgi_driver.py sends the requests straight to
the ASGI app (uvicorn and the sockets left out) with the real spool writer
process and redis-server; only the app's process is counted, not its writer.

Figures: thousands of instructions per request for the no-op, the durability
floor (`/bench/commit`) and ingest, and ingest's instructions over the no-op's.
Instructions are not time (ingest's run a little slower per instruction than
the framework's), so this ratio sits above the wall-clock one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.procs import REPO

ENDPOINTS = ("noop", "commit", "ingest")
PER_CLIENT = 40  # 64 clients: 2,560 requests an endpoint


def _totals(dump: Path) -> tuple[str, int]:
    text = dump.read_text()
    name = re.search(r"^desc: Trigger: dump (\S+)$", text, re.M)
    total = re.search(r"^totals: (\d+)", text, re.M)
    if name is None or total is None:
        raise RuntimeError(f"{dump.name}: not a dump of an endpoint")
    return name.group(1), int(total.group(1))


def run() -> dict[str, float]:
    """Count; return the figures."""
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run `make bench` (it installs it)")
    with tempfile.TemporaryDirectory(prefix="iotgw-instr-") as tmp:
        out = Path(tmp)
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}/callgrind.%p",
                sys.executable,
                "-m",
                "tests.bench.asgi_driver",
                ",".join(ENDPOINTS),
                str(PER_CLIENT),
            ],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=1200,
        )
        counts = dict(_totals(dump) for dump in out.glob("callgrind.*.*"))
    requests = 64 * PER_CLIENT
    per_request = {name: counts[name] / requests / 1000 for name in ENDPOINTS}
    for name in ENDPOINTS:
        print(f"{name}: {per_request[name]:,.1f}k instructions a request")
    return {
        "http_instr_noop_k": round(per_request["noop"], 1),
        "http_instr_commit_floor_k": round(per_request["commit"], 1),
        "http_instr_ingest_k": round(per_request["ingest"], 1),
        "http_instr_noop_to_ingest_ratio": round(per_request["noop"] / per_request["ingest"], 3),
    }
