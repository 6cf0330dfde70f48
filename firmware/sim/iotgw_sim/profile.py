"""Fleet profiles: which devices, and how each one's battery, radio and sensors behave.

Profiles live in a TOML file (``firmware/sim/profiles.toml`` by default)::

    [profiles.demo]
    tenant = "sim"
    site = "lab"
    [profiles.demo.defaults]      # merged under every device of the profile
    period_s = 1.0
    [[profiles.demo.devices]]
    id = "sim-01"
    battery = { kind = "bank" }
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec

from .models import BatteryConfig, SensorConfig, WifiConfig

DEFAULT_PROFILES = Path(__file__).resolve().parent.parent / "profiles.toml"
EVENT_KINDS = ("wifi_drop", "brownout")


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A scheduled fault: ``wifi_drop`` for ``duration_s``, or a ``brownout`` reset."""

    at_s: float  # seconds after the fleet started
    kind: str
    duration_s: float = 0.0


class DeviceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One simulated device. Defaults are the STM32 firmware's (firmware/stm32/README.md)."""

    id: str
    period_s: float = 1.0  # sample period with a healthy battery
    health_every: int = 10  # a `health` message after every N telemetry readings (0: none)
    keepalive_s: int = 30
    ring_slots: int = 24
    seq_lease: int = 16
    puback_timeout_s: float = 3.0  # no PUBACK in this time: the link counts as lost
    connect_timeout_s: float = 5.0
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 8.0
    boot_s: float = 2.0  # time from reset to the first sample
    low_power_factor: int = 10  # battery saver: sample this many times less often
    low_power_batch: int = 8  # battery saver: radio on once this many readings wait
    mqtt_version: int = 4  # 4 = MQTT 3.1.1 (as the firmware), 5 = MQTT v5
    battery: BatteryConfig = BatteryConfig()
    wifi: WifiConfig = WifiConfig()
    sensors: SensorConfig = SensorConfig()
    events: tuple[Event, ...] = ()

    def __post_init__(self) -> None:
        for event in self.events:
            if event.kind not in EVENT_KINDS:
                raise msgspec.ValidationError(f"unknown event kind {event.kind!r} on {self.id}")
        if self.mqtt_version not in (4, 5):
            raise msgspec.ValidationError("mqtt_version must be 4 (3.1.1) or 5")


class Profile(msgspec.Struct, frozen=True):
    """A named fleet."""

    name: str
    tenant: str
    site: str
    seed: int
    devices: tuple[DeviceSpec, ...]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_profile(name: str, path: Path = DEFAULT_PROFILES) -> Profile:
    """The profile ``name`` from the TOML file at ``path``; ValueError names what is wrong."""
    data = tomllib.loads(path.read_text())
    profiles = data.get("profiles", {})
    if name not in profiles:
        raise ValueError(f"no profile {name!r} in {path} (has: {', '.join(sorted(profiles))})")
    raw = profiles[name]
    defaults = raw.get("defaults", {})
    try:
        devices = tuple(
            msgspec.convert(_merge(defaults, d), DeviceSpec) for d in raw.get("devices", [])
        )
    except msgspec.ValidationError as exc:
        raise ValueError(f"profile {name!r} in {path}: {exc}") from None
    if not devices:
        raise ValueError(f"profile {name!r} has no devices")
    ids = [d.id for d in devices]
    if len(set(ids)) != len(ids):
        raise ValueError(f"profile {name!r}: device ids repeat")
    return Profile(
        name=name,
        tenant=str(raw.get("tenant", "sim")),
        site=str(raw.get("site", "lab")),
        seed=int(raw.get("seed", 1)),
        devices=devices,
    )
