"""What both locustfiles share: the onboarded devices, one per simulated user, and readings.

``python -m loadtest.run`` starts the stack, onboards the devices and writes
their credentials and the stack's addresses to the file named by
``IOTGW_LOADTEST_DEVICES`` (var/loadtest/devices.json).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

DEVICES_FILE = Path(os.environ.get("IOTGW_LOADTEST_DEVICES", "var/loadtest/devices.json"))

_lock = threading.Lock()
_next = itertools.count()
_config: dict[str, Any] | None = None


def config() -> dict[str, Any]:
    """The devices file (read once)."""
    global _config
    with _lock:
        if _config is None:
            _config = json.loads(DEVICES_FILE.read_text())
        return _config


def take_device() -> dict[str, Any]:
    """The next device's credentials: users get devices round robin, so that no two users
    share a device (and its seq space) while there are as many devices as users."""
    devices = config()["devices"]
    with _lock:
        return dict(devices[next(_next) % len(devices)])


class SeqCounter:
    """Increasing seqs for one device; starting from the clock keeps reruns apart."""

    def __init__(self) -> None:
        self._seq = time.time_ns() // 1000  # microseconds: far below 2^63-1

    def next(self) -> int:
        self._seq += 1
        return self._seq


def valid_reading(seq: int) -> dict[str, Any]:
    """A reading the gateway accepts."""
    return {
        "seq": seq,
        "metrics": {
            "temp_c": round(random.uniform(15, 30), 2),
            "humidity_pct": round(random.uniform(20, 80), 1),
            "pressure_hpa": round(random.uniform(990, 1030), 2),
        },
        "tags": {"fw": "loadtest"},
    }


# Readings the gateway must refuse, with the error code it must name (docs/http-api.md).
INVALID_READINGS: list[tuple[dict[str, Any], str]] = [
    ({"metrics": {"Temp": 1.0}}, "invalid_metric_key"),
    ({"metrics": {"temp_c": "warm"}}, "invalid_metric_value"),
    ({"metrics": {f"m{i}": i for i in range(33)}}, "too_many_metrics"),
    ({"seq": -1, "metrics": {"temp_c": 1.0}}, "invalid_seq"),
    ({"tags": {"fw": "x"}}, "empty_reading"),
    ({"metrics": {"temp_c": 1.0}, "extra": 1}, "unknown_field"),
]


def invalid_reading() -> tuple[dict[str, Any], str]:
    """A reading the gateway must refuse, and the code it must answer with."""
    return random.choice(INVALID_READINGS)
