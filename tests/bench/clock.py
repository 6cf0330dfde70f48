"""Wall time and whole-machine CPU time of a benchmark run.

The figures of `make bench` are rates; the CPU the whole machine spent per
message or request (every process, from /proc/stat) says where the two cores
went, and bounds what any implementation could reach on them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Clock:
    """Wall time and whole-machine CPU time between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.t0 = self.cpu0 = 0.0

    def start(self) -> Clock:
        """Start (or restart) the clock."""
        self.t0, self.cpu0 = time.perf_counter(), machine_busy_s()
        return self

    def stop(self, count: float) -> tuple[float, float]:
        """``count`` per second and the machine's CPU microseconds per unit of ``count``."""
        wall, cpu = time.perf_counter() - self.t0, machine_busy_s() - self.cpu0
        return count / wall, cpu / max(count, 1) * 1e6
