"""Physical models of a field device: battery, Wi-Fi link, sensors, reconnect backoff.

Each model is advanced by the device loop with the seconds elapsed since its
last step and draws its randomness from the device's own ``random.Random``, so
that a fleet started with the same seed behaves the same way (up to the
timing of the real broker and network).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field

import msgspec

# Open-circuit voltage of a 1-cell LiPo against its state of charge (typical curve).
LIPO_OCV: tuple[tuple[float, float], ...] = (
    (0.00, 3.00),
    (0.05, 3.45),
    (0.10, 3.60),
    (0.20, 3.70),
    (0.40, 3.80),
    (0.60, 3.90),
    (0.80, 4.03),
    (1.00, 4.20),
)


def interpolate(table: tuple[tuple[float, float], ...], x: float) -> float:
    """Piecewise linear interpolation in a table sorted by its first column."""
    if x <= table[0][0]:
        return table[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(table):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return table[-1][1]


class BatteryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A battery (or a power bank, which never sags) as a profile describes it."""

    kind: str = "lipo"  # "lipo" or "bank" (USB power bank: a steady 5 V until empty)
    capacity_mah: float = 2000.0
    soc: float = 1.0  # state of charge at start, 0..1
    r_int_ohm: float = 0.15  # internal resistance when full; it grows as the cell empties
    brownout_v: float = 3.1  # below this under load the regulator drops out: MCU reset
    cutoff_v: float = 3.3  # resting voltage at which the device stays off
    low_v: float = 3.4  # battery-saver mode below (firmware power.c), left above recover_v
    recover_v: float = 3.6
    time_scale: float = 1.0  # simulated battery seconds per real second (drift made visible)
    noise_v: float = 0.01  # measurement and load noise, 1 sigma


# Currents of the device by what it is doing (STM32 + ESP-AT module), in mA.
CURRENT_SLEEP_MA = 8.0
CURRENT_IDLE_MA = 80.0  # radio associated, listening
CURRENT_TX_MA = 320.0  # radio transmitting: connect handshake, PUBLISH
CURRENT_BOOT_MA = 60.0


@dataclass
class Battery:
    """State of charge drained by the load; terminal voltage sags with current and age."""

    config: BatteryConfig
    rng: random.Random
    soc: float = field(init=False)

    def __post_init__(self) -> None:
        self.soc = min(1.0, max(0.0, self.config.soc))

    def step(self, dt_s: float, current_ma: float) -> None:
        """Drain the cell by ``current_ma`` for ``dt_s`` real seconds (times the time scale)."""
        used_mah = current_ma * dt_s * self.config.time_scale / 3600.0
        self.soc = max(0.0, self.soc - used_mah / self.config.capacity_mah)

    def resistance(self) -> float:
        """Internal resistance: rises steeply as the cell empties."""
        return self.config.r_int_ohm * (1.0 + 3.0 * (1.0 - self.soc) ** 2)

    def voltage(self, current_ma: float) -> float:
        """Terminal voltage under ``current_ma`` (with noise)."""
        if self.config.kind == "bank":
            return 5.0 if self.soc > 0 else 0.0
        ocv = interpolate(LIPO_OCV, self.soc)
        sag = current_ma / 1000.0 * self.resistance()
        return ocv - sag + self.rng.gauss(0.0, self.config.noise_v)

    def browns_out(self, current_ma: float) -> bool:
        """True when this load pulls the voltage under the brown-out threshold."""
        return self.config.kind != "bank" and self.voltage(current_ma) < self.config.brownout_v

    def depleted(self) -> bool:
        """True when even the resting voltage is under the cut-off: the device stays off."""
        if self.config.kind == "bank":
            return self.soc <= 0
        return interpolate(LIPO_OCV, self.soc) < self.config.cutoff_v


class WifiConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Radio link quality as a profile describes it."""

    rssi_mean_dbm: float = -60.0
    rssi_sigma_dbm: float = 3.0  # spread of the mean-reverting random walk
    link_lost_dbm: float = -88.0  # below this the module loses the access point
    drops_per_hour: float = 0.0  # random drop windows (Poisson)
    drop_s: tuple[float, float] = (5.0, 20.0)  # a random drop lasts this long (uniform)


@dataclass
class Wifi:
    """RSSI as a mean-reverting random walk; the link is down in drop windows or at weak RSSI."""

    config: WifiConfig
    rng: random.Random
    rssi: float = field(init=False)
    forced: list[tuple[float, float]] = field(default_factory=list)  # (start, end) windows
    _random_until: float = 0.0

    def __post_init__(self) -> None:
        self.rssi = self.config.rssi_mean_dbm

    def force_drop(self, start_s: float, duration_s: float) -> None:
        """Schedule a drop window (seconds on the device clock)."""
        self.forced.append((start_s, start_s + duration_s))

    def step(self, now_s: float, dt_s: float) -> None:
        """Move RSSI and perhaps start a random drop window."""
        pull = 0.2 * dt_s  # time constant of about 5 s back towards the mean
        noise = self.config.rssi_sigma_dbm * math.sqrt(2 * pull)
        self.rssi += (self.config.rssi_mean_dbm - self.rssi) * pull + self.rng.gauss(0.0, noise)
        rate = self.config.drops_per_hour / 3600.0
        if now_s >= self._random_until and rate > 0 and self.rng.random() < rate * dt_s:
            low, high = self.config.drop_s
            self._random_until = now_s + self.rng.uniform(low, high)

    def up(self, now_s: float) -> bool:
        """True when the module is associated with the access point."""
        if now_s < self._random_until:
            return False
        if any(start <= now_s < end for start, end in self.forced):
            return False
        return self.rssi >= self.config.link_lost_dbm


class SensorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Environment of the device's sensors."""

    temp_c: float = 21.0  # mean temperature
    temp_swing_c: float = 2.0  # amplitude of the slow (daily) swing
    humidity_pct: float = 45.0
    pressure_hpa: float = 1013.0
    day_s: float = 600.0  # period of the swing (a "day", shortened for demos)


@dataclass
class Sensors:
    """Temperature, relative humidity and pressure with drift and noise."""

    config: SensorConfig
    rng: random.Random
    _pressure: float = field(init=False)
    _phase: float = field(init=False)

    def __post_init__(self) -> None:
        self._pressure = self.config.pressure_hpa
        self._phase = self.rng.uniform(0, 2 * math.pi)

    def read(self, now_s: float) -> dict[str, float]:
        """One reading of every sensor, rounded as the firmware prints them."""
        c = self.config
        swing = math.sin(2 * math.pi * now_s / c.day_s + self._phase)
        temp = c.temp_c + c.temp_swing_c * swing + self.rng.gauss(0.0, 0.05)
        humidity = min(100.0, max(0.0, c.humidity_pct - 3.0 * swing + self.rng.gauss(0.0, 0.3)))
        self._pressure += (c.pressure_hpa - self._pressure) * 0.01 + self.rng.gauss(0.0, 0.05)
        return {
            "temp_c": round(temp, 2),
            "humidity_pct": round(humidity, 1),
            "pressure_hpa": round(self._pressure, 2),
        }


@dataclass
class Backoff:
    """Reconnect delays, as the firmware's backoff.c: attempt n waits U[0, min(cap, base*2^n)]."""

    rng: random.Random
    base_s: float = 0.25
    cap_s: float = 8.0
    attempt: int = 0

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before attempt number ``attempt`` (0-based)."""
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt, 30))

    def next_delay(self) -> float:
        """Full jitter: a uniform delay under the current ceiling; the next one may be longer."""
        delay = self.rng.uniform(0.0, self.ceiling(self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """After a successful connection."""
        self.attempt = 0
