"""The device registry: which devices exist, where they belong, their credentials and limits.

The registry is one TOML file (default ``var/devices/registry.toml``) that an
operator can read and edit; ``iotgw devices ...`` writes it too. Services hold
a :class:`RegistryWatcher` that re-reads the file when its modification time
or size changes, so an edit takes effect without a restart. A file that does
not parse is logged and the last good registry stays in force.

What is stored (docs/devices.md):

- ``mqtt_password_hash``: the broker password, hashed as ``mosquitto_passwd``
  hashes it (PBKDF2-SHA512); the password itself is shown once and never kept.
- ``http_secret``: the key of the HTTP HMAC signature and of the device's JWTs.
  HMAC needs the key itself on the verifying side, so it is stored as is: the
  file is written with mode 0600.
- ``cert_fingerprint``: SHA-256 of the client certificate, when one was issued.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .validation import DEVICE_ID_RE

log = logging.getLogger(__name__)

DEFAULT_RATE_PER_S = 50.0
DEFAULT_BURST = 100
# Tenants and sites are MQTT topic levels: no wildcards, no slashes.
NAME_RE = DEVICE_ID_RE

HEADER = """\
# Device registry of the iot-gateway (docs/devices.md).
# Written by `iotgw devices add|rotate|remove`; an operator may edit it by hand.
# The ingest services re-read it when it changes (no restart). After a hand
# edit, `iotgw devices sync` regenerates the broker's password and ACL files.
# Secrets: mqtt_password_hash is a mosquitto_passwd hash; http_secret is the
# HMAC/JWT key and must be kept as is (keep this file mode 0600).
"""


class RegistryError(Exception):
    """The registry file is missing, unreadable or holds an invalid entry."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-device HTTP rate limit: a token bucket of ``burst`` refilled at ``rate_per_s``."""

    rate_per_s: float = DEFAULT_RATE_PER_S
    burst: int = DEFAULT_BURST


@dataclass(frozen=True, slots=True)
class Device:
    """One registered device."""

    device_id: str
    tenant: str
    site: str
    mqtt_password_hash: str = ""
    http_secret: str = ""
    cert_fingerprint: str = ""
    limits: Limits = field(default_factory=Limits)
    created_at: str = ""
    rotated_at: str = ""

    def publish_topics(self) -> list[str]:
        """The exact topics this device may publish to (one per record class)."""
        base = f"v1/{self.tenant}/{self.site}/{self.device_id}"
        return [f"{base}/telemetry", f"{base}/health", f"{base}/control-ack"]

    def command_filter(self) -> str:
        """The topic filter of this device's commands (it may subscribe only to these)."""
        return f"v1/{self.tenant}/{self.site}/{self.device_id}/cmd/#"


@dataclass(frozen=True, slots=True)
class Registry:
    """All devices by id, plus the default limits."""

    devices: dict[str, Device] = field(default_factory=dict)
    defaults: Limits = field(default_factory=Limits)

    def get(self, device_id: str) -> Device | None:
        """The device, or None when it is not registered."""
        return self.devices.get(device_id)

    def with_device(self, device: Device) -> Registry:
        """A copy with ``device`` added or replaced."""
        return replace(self, devices={**self.devices, device.device_id: device})

    def without(self, device_id: str) -> Registry:
        """A copy without ``device_id``."""
        return replace(self, devices={k: v for k, v in self.devices.items() if k != device_id})


def check_name(kind: str, value: str) -> None:
    """Raise RegistryError unless ``value`` is a valid device id, tenant or site."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise RegistryError(f"{kind} {value!r} must match ^[A-Za-z0-9_-]{{1,64}}$")


def _limits(raw: Any, base: Limits, where: str) -> Limits:
    if not isinstance(raw, dict):
        raise RegistryError(f"{where}: must be a table")
    rate = raw.get("rate_per_s", base.rate_per_s)
    burst = raw.get("burst", base.burst)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
        raise RegistryError(f"{where}.rate_per_s must be a number > 0")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise RegistryError(f"{where}.burst must be an integer >= 1")
    return Limits(rate_per_s=float(rate), burst=burst)


def parse_registry(text: str) -> Registry:
    """Parse the TOML text of a registry file; RegistryError names the bad entry."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"not valid TOML: {exc}") from None
    defaults = _limits(doc.get("defaults", {}), Limits(), "defaults")
    devices: dict[str, Device] = {}
    raw_devices = doc.get("devices", {})
    if not isinstance(raw_devices, dict):
        raise RegistryError("devices must be a table of tables")
    for device_id, raw in raw_devices.items():
        where = f"devices.{device_id}"
        check_name("device id", device_id)
        if not isinstance(raw, dict):
            raise RegistryError(f"{where}: must be a table")
        for key in ("tenant", "site"):
            if key not in raw:
                raise RegistryError(f"{where}.{key} is required")
            check_name(f"{where}.{key}", raw[key])
        strings = {}
        for key in (
            "mqtt_password_hash",
            "http_secret",
            "cert_fingerprint",
            "created_at",
            "rotated_at",
        ):
            value = raw.get(key, "")
            if not isinstance(value, str):
                raise RegistryError(f"{where}.{key} must be a string")
            strings[key] = value
        devices[device_id] = Device(
            device_id=device_id,
            tenant=raw["tenant"],
            site=raw["site"],
            limits=_limits(raw, defaults, where),
            **strings,
        )
    return Registry(devices=devices, defaults=defaults)


def _toml_str(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=False)


def render_registry(registry: Registry) -> str:
    """The TOML text of a registry, as ``iotgw devices`` writes it."""
    out = [HEADER, "[defaults]"]
    out.append(f"rate_per_s = {registry.defaults.rate_per_s!r}")
    out.append(f"burst = {registry.defaults.burst}")
    for device_id in sorted(registry.devices):
        dev = registry.devices[device_id]
        out.append("")
        out.append(f"[devices.{_toml_str(device_id)}]")
        out.append(f"tenant = {_toml_str(dev.tenant)}")
        out.append(f"site = {_toml_str(dev.site)}")
        for key in ("mqtt_password_hash", "http_secret", "cert_fingerprint"):
            value = getattr(dev, key)
            if value:
                out.append(f"{key} = {_toml_str(value)}")
        if dev.limits != registry.defaults:
            out.append(f"rate_per_s = {dev.limits.rate_per_s!r}")
            out.append(f"burst = {dev.limits.burst}")
        for key in ("created_at", "rotated_at"):
            value = getattr(dev, key)
            if value:
                out.append(f"{key} = {_toml_str(value)}")
    return "\n".join(out) + "\n"


def load_registry(path: str | Path) -> Registry:
    """Read a registry file; a missing file is an empty registry."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        return Registry()
    except OSError as exc:
        raise RegistryError(f"{p}: {exc.strerror}") from None
    try:
        return parse_registry(text)
    except RegistryError as exc:
        raise RegistryError(f"{p}: {exc}") from None


def write_private(path: str | Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` atomically (temp file + rename) with ``text``, mode ``mode``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_registry(path: str | Path, registry: Registry) -> None:
    """Write a registry file atomically, readable by its owner only."""
    write_private(path, render_registry(registry))


class RegistryWatcher:
    """The registry as a service sees it: re-read when the file changes.

    :meth:`current` costs one ``stat`` at most every ``check_interval_s``;
    a file that fails to parse keeps the previous registry (and is logged once
    per change).
    """

    def __init__(self, path: str | Path, check_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._registry = Registry()
        self._stamp: tuple[int, int] | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self.error: str | None = None
        self.reload()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload(self) -> bool:
        """Re-read the file if it changed; True when a new registry was taken."""
        with self._lock:
            self._checked_at = time.monotonic()
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                registry = load_registry(self.path)
            except RegistryError as exc:
                self.error = str(exc)
                log.error("device registry not reloaded, keeping the previous one: %s", exc)
                return False
            self.error = None
            self._registry = registry
            log.info("device registry loaded: %d devices from %s", len(registry.devices), self.path)
            return True

    def current(self) -> Registry:
        """The registry in force (re-read first when the file changed)."""
        if time.monotonic() - self._checked_at >= self.check_interval_s:
            self.reload()
        return self._registry
