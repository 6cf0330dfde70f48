"""Wall time and whole-machine CPU time of a benchmark run.

The figures of `make bench` are rates; the CPU the whole machine spent per
message or request (every process, from /proc/stat) says where the two cores
went, and bounds what any implementation could reach on them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.support.procs import children_of


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has spent; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_children(name: str, pid: int) -> dict[str, int]:
    """``{name: pid}`` and each of its child processes as ``name/child-N``."""
    return {name: pid} | {f"{name}/child-{i}": c for i, c in enumerate(children_of(pid))}


class Clock:
    """Wall time and whole-machine CPU time between :meth:`start` and :meth:`stop`.

    ``processes`` (name -> pid): their CPU time is also taken, for :attr:`per_process`
    (CPU microseconds per unit of ``count`` of each; read it after :meth:`stop`).
    """

    def __init__(self, processes: dict[str, int] | None = None) -> None:
        self.t0 = self.cpu0 = 0.0
        self.processes = dict(processes or {})
        self._proc0: dict[str, float] = {}
        self.per_process: dict[str, float] = {}

    def start(self) -> Clock:
        """Start (or restart) the clock."""
        self._proc0 = {name: process_cpu_s(pid) for name, pid in self.processes.items()}
        self.t0, self.cpu0 = time.perf_counter(), machine_busy_s()
        return self

    def stop(self, count: float) -> tuple[float, float]:
        """``count`` per second and the machine's CPU microseconds per unit of ``count``."""
        wall, cpu = time.perf_counter() - self.t0, machine_busy_s() - self.cpu0
        n = max(count, 1)
        self.per_process = {
            name: round((process_cpu_s(pid) - self._proc0[name]) / n * 1e6, 1)
            for name, pid in self.processes.items()
        }
        return count / wall, cpu / n * 1e6

    def report(self, label: str, unit: str) -> None:
        """Print where the CPU of the run went: microseconds per ``unit`` of each process."""
        if self.per_process:
            parts = ", ".join(f"{name} {us:g}" for name, us in self.per_process.items())
            print(f"{label}: CPU µs per {unit} by process: {parts}", flush=True)


class OutboxLines:
    """Lines in the outbox files so far, reading only what was appended since the last call.

    The clock's poll runs on the same two cores as the gateway: re-reading every
    file each 50 ms cost it up to ~14 MB a poll by the end of a run.
    """

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.offsets: dict[Path, int] = {}
        self.lines = 0

    def __call__(self) -> int:
        for path in sorted(self.outbox.glob("outbox-*.jsonl")):
            with path.open("rb") as f:
                f.seek(self.offsets.get(path, 0))
                chunk = f.read()
            # Only whole lines count; a partly written last line is read again next time.
            whole = chunk.rfind(b"\n") + 1
            self.lines += chunk.count(b"\n", 0, whole)
            self.offsets[path] = self.offsets.get(path, 0) + whole
        return self.lines
