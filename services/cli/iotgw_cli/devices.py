"""`iotgw devices ...`: onboard, list, rotate and remove devices.

Each change rewrites the registry (var/devices/registry.toml), regenerates the
broker's password and ACL files and SIGHUPs the broker. Secrets are printed
once, as JSON on stdout; the registry keeps the broker password only as a
mosquitto_passwd hash (the HTTP secret must be kept as is: see docs/devices.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from iotgw_core.auth import hash_mqtt_password, make_jwt, new_secret
from iotgw_core.registry import (
    Device,
    Limits,
    Registry,
    RegistryError,
    check_name,
    load_registry,
    save_registry,
    write_private,
)

from . import pki
from .broker import SERVICE_PREFIX, sync_broker_files
from .paths import Paths

TOKEN_TTL_S = 365 * 86400
DEV_DEVICE = "dev-device-01"


class CliError(Exception):
    """A command cannot be carried out; the message says why."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def locked_registry(paths: Paths) -> Iterator[Registry]:
    """The registry, with an exclusive lock held while a command changes it."""
    paths.registry.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.registry.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield load_registry(paths.registry)


def _credentials(paths: Paths, device: Device, *, cert: bool) -> tuple[Device, dict[str, Any]]:
    """New password, HTTP secret (and certificate): the updated device and what to show once."""
    password = new_secret()
    http_secret = new_secret(32)
    shown: dict[str, Any] = {
        "device_id": device.device_id,
        "tenant": device.tenant,
        "site": device.site,
        "username": device.device_id,
        "password": password,
        "http_secret": http_secret,
        "http_token": make_jwt(http_secret, device.device_id, TOKEN_TTL_S),
        "publish_topics": device.publish_topics(),
        "command_topics": device.command_filter(),
        "ca_file": str(paths.ca_cert.resolve()),
    }
    fingerprint = device.cert_fingerprint
    if cert:
        if not paths.ca_key.exists():
            raise CliError(f"no CA at {paths.ca_key}: run `iotgw broker setup` (or `make run`)")
        where = paths.device_dir(device.device_id)
        issued = pki.issue(
            paths.ca_cert,
            paths.ca_key,
            device.device_id,
            where / "client.crt",
            where / "client.key",
        )
        fingerprint = issued.fingerprint
        shown["cert_file"] = str(issued.cert.resolve())
        shown["key_file"] = str(issued.key.resolve())
        shown["cert_fingerprint"] = fingerprint
    updated = Device(
        device_id=device.device_id,
        tenant=device.tenant,
        site=device.site,
        mqtt_password_hash=hash_mqtt_password(password),
        http_secret=http_secret,
        cert_fingerprint=fingerprint,
        limits=device.limits,
        created_at=device.created_at or _now(),
        rotated_at=_now() if device.created_at else "",
    )
    return updated, shown


def add_device(
    paths: Paths,
    device_id: str,
    tenant: str,
    site: str,
    *,
    cert: bool = False,
    limits: Limits | None = None,
) -> dict[str, Any]:
    """Register a device with new credentials; returns the secrets (show them once)."""
    try:
        check_name("device id", device_id)
        check_name("tenant", tenant)
        check_name("site", site)
    except RegistryError as exc:
        raise CliError(str(exc)) from None
    if device_id.startswith(SERVICE_PREFIX):
        raise CliError(f"device ids starting with {SERVICE_PREFIX!r} are kept for the gateway")
    with locked_registry(paths) as registry:
        if registry.get(device_id) is not None:
            raise CliError(f"device {device_id!r} exists; use `rotate` or `remove` first")
        draft = Device(
            device_id=device_id,
            tenant=tenant,
            site=site,
            limits=limits or registry.defaults,
        )
        device, shown = _credentials(paths, draft, cert=cert)
        registry = registry.with_device(device)
        save_registry(paths.registry, registry)
        shown["broker_reloaded"] = sync_broker_files(paths, registry)
    return shown


def rotate_device(paths: Paths, device_id: str, *, cert: bool = False) -> dict[str, Any]:
    """New password and HTTP secret (and certificate when asked); the old ones stop working."""
    with locked_registry(paths) as registry:
        device = registry.get(device_id)
        if device is None:
            raise CliError(f"no device {device_id!r}")
        device, shown = _credentials(paths, device, cert=cert or bool(device.cert_fingerprint))
        registry = registry.with_device(device)
        save_registry(paths.registry, registry)
        shown["broker_reloaded"] = sync_broker_files(paths, registry)
    return shown


def remove_device(paths: Paths, device_id: str) -> bool:
    """Remove a device and its certificate files; False when it was not registered."""
    with locked_registry(paths) as registry:
        if registry.get(device_id) is None:
            return False
        registry = registry.without(device_id)
        save_registry(paths.registry, registry)
        shutil.rmtree(paths.device_dir(device_id), ignore_errors=True)
        sync_broker_files(paths, registry)
    return True


def ensure_dev_device(
    paths: Paths,
    out: Path,
    *,
    host: str,
    device_port: int,
    cert_port: int | None,
    http_port: int,
    tenant: str = "dev",
    site: str = "lab",
) -> dict[str, Any]:
    """The development device of `make run`: created once, its credentials in ``out``."""
    if out.exists() and load_registry(paths.registry).get(DEV_DEVICE) is not None:
        info: dict[str, Any] = json.loads(out.read_text())
        return info
    with contextlib.suppress(CliError):
        remove_device(paths, DEV_DEVICE)
    shown = add_device(paths, DEV_DEVICE, tenant, site, cert=cert_port is not None)
    shown.pop("broker_reloaded", None)
    info = {
        **shown,
        "broker_host": host,
        "mqtt_port": device_port,
        "mqtt_tls": True,
        "mqtt_cert_port": cert_port,
        "http_url": f"http://{host}:{http_port}/v1/ingest/{DEV_DEVICE}",
        "note": "development device created by `make run`; keep this file private",
    }
    write_private(out, json.dumps(info, indent=2) + "\n")
    return info


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `iotgw devices ...`."""
    parser = sub.add_parser("devices", help="device registry and onboarding")
    cmds = parser.add_subparsers(dest="devices_cmd", required=True)
    p = cmds.add_parser("add", help="register a device; prints its secrets once")
    p.add_argument("device_id")
    p.add_argument("--tenant", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--cert", action="store_true", help="also issue a client certificate (CN=id)")
    p.add_argument("--rate", type=float, help="HTTP rate limit, readings per second")
    p.add_argument("--burst", type=int, help="HTTP rate limit burst")
    p.set_defaults(func=_cmd_add)
    p = cmds.add_parser("list", help="registered devices (no secrets)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_list)
    p = cmds.add_parser("rotate", help="new credentials for a device; prints them once")
    p.add_argument("device_id")
    p.add_argument("--cert", action="store_true", help="also (re)issue a client certificate")
    p.set_defaults(func=_cmd_rotate)
    p = cmds.add_parser("remove", help="remove a device; its credentials stop working")
    p.add_argument("device_id")
    p.set_defaults(func=_cmd_remove)
    p = cmds.add_parser("sync", help="regenerate broker files after a hand edit of the registry")
    p.set_defaults(func=_cmd_sync)
    p = cmds.add_parser("dev", help="the development device of `make run` (created once)")
    p.add_argument("--out", type=Path, default=Path("var/dev-device.json"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--device-port", type=int, default=8883)
    p.add_argument("--cert-port", type=int, default=8884)
    p.add_argument("--http-port", type=int, default=8000)
    p.set_defaults(func=_cmd_dev)


def _show_secrets(shown: dict[str, Any]) -> None:
    print(json.dumps(shown, indent=2))
    print(
        "These secrets are shown once: the registry keeps only a hash of the password.",
        file=sys.stderr,
    )


def _cmd_add(args: argparse.Namespace, paths: Paths) -> int:
    limits = None
    if args.rate is not None or args.burst is not None:
        base = load_registry(paths.registry).defaults
        limits = Limits(
            rate_per_s=args.rate if args.rate is not None else base.rate_per_s,
            burst=args.burst if args.burst is not None else base.burst,
        )
    _show_secrets(
        add_device(paths, args.device_id, args.tenant, args.site, cert=args.cert, limits=limits)
    )
    return 0


def _cmd_list(args: argparse.Namespace, paths: Paths) -> int:
    registry = load_registry(paths.registry)
    rows = [
        {
            "device_id": d.device_id,
            "tenant": d.tenant,
            "site": d.site,
            "password": bool(d.mqtt_password_hash),
            "http": bool(d.http_secret),
            "cert": d.cert_fingerprint[:16],
            "rate_per_s": d.limits.rate_per_s,
            "burst": d.limits.burst,
            "created_at": d.created_at,
            "rotated_at": d.rotated_at,
        }
        for d in sorted(registry.devices.values(), key=lambda d: d.device_id)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'DEVICE':<24} {'TENANT':<12} {'SITE':<12} {'CREDENTIALS':<18} {'RATE/S':>7} {'BURST':>6}"
    )
    for r in rows:
        creds = ",".join(k for k in ("password", "http") if r[k]) + (",cert" if r["cert"] else "")
        print(
            f"{r['device_id']:<24} {r['tenant']:<12} {r['site']:<12} {creds:<18}"
            f" {r['rate_per_s']:>7g} {r['burst']:>6}"
        )
    return 0


def _cmd_rotate(args: argparse.Namespace, paths: Paths) -> int:
    _show_secrets(rotate_device(paths, args.device_id, cert=args.cert))
    return 0


def _cmd_remove(args: argparse.Namespace, paths: Paths) -> int:
    if not remove_device(paths, args.device_id):
        raise CliError(f"no device {args.device_id!r}")
    print(f"removed {args.device_id}")
    return 0


def _cmd_sync(args: argparse.Namespace, paths: Paths) -> int:
    signalled = sync_broker_files(paths)
    print(
        "broker files regenerated" + ("; broker reloaded" if signalled else "; no broker running")
    )
    return 0


def _cmd_dev(args: argparse.Namespace, paths: Paths) -> int:
    info = ensure_dev_device(
        paths,
        args.out,
        host=args.host,
        device_port=args.device_port,
        cert_port=args.cert_port or None,
        http_port=args.http_port,
    )
    print(json.dumps(info, indent=2))
    return 0
