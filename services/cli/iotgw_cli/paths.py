"""Where the CLI finds the registry, the broker's files, the CA and the quarantine.

Every path has an ``IOTGW_*`` variable (the services read the same ones) and a
default under ``var/`` of the current directory, which is what ``make run`` uses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """The files the CLI reads and writes."""

    registry: Path
    broker_dir: Path
    pki_dir: Path
    quarantine: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Paths:
        """Paths from IOTGW_REGISTRY_PATH, _BROKER_DIR, _PKI_DIR, _QUARANTINE_PATH, _VAR_DIR."""
        env = os.environ if environ is None else environ
        var = Path(env.get("IOTGW_VAR_DIR", "var"))
        return cls(
            registry=Path(env.get("IOTGW_REGISTRY_PATH", var / "devices" / "registry.toml")),
            broker_dir=Path(env.get("IOTGW_BROKER_DIR", var / "mosquitto")),
            pki_dir=Path(env.get("IOTGW_PKI_DIR", var / "pki")),
            quarantine=Path(env.get("IOTGW_QUARANTINE_PATH", var / "quarantine" / "quarantine.db")),
        )

    # Files of the broker directory.
    @property
    def password_file(self) -> Path:
        return self.broker_dir / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.broker_dir / "acl"

    @property
    def service_users(self) -> Path:
        """Hashed passwords of the gateway's own MQTT users (ingest, bench)."""
        return self.broker_dir / "service-users.passwd"

    @property
    def pid_file(self) -> Path:
        return self.broker_dir / "mosquitto.pid"

    @property
    def config_file(self) -> Path:
        return self.broker_dir / "mosquitto.conf"

    @property
    def ca_cert(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.pki_dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.pki_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.pki_dir / "server.key"

    def device_dir(self, device_id: str) -> Path:
        """Where a device's client certificate and key are written."""
        return self.pki_dir / "devices" / device_id
