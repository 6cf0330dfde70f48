"""A fleet of simulated devices: onboarding through the registry CLI, one thread per device.

Onboarding runs the operator's own command, ``iotgw devices add ID --tenant T
--site S`` (``python -m iotgw_cli``, with the caller's ``IOTGW_*`` paths), and
keeps the secrets it prints once in ``<state_dir>/<device>/credentials.json``
(mode 0600). A device that is registered but whose secrets are not kept here
gets new ones with ``iotgw devices rotate``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .device import BrokerTarget, Credentials, SimDevice
from .profile import Profile


class OnboardingError(Exception):
    """The registry CLI refused or failed; the message carries its output."""


def _cli(args: list[str], env: Mapping[str, str] | None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "iotgw_cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    if proc.returncode != 0:
        raise OnboardingError(f"iotgw {' '.join(args)}: {proc.stderr.strip() or proc.stdout}")
    return proc.stdout


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def onboard(
    profile: Profile, state_dir: Path, env: Mapping[str, str] | None = None
) -> dict[str, Credentials]:
    """Register every device of the profile (or reuse kept secrets); their credentials."""
    registered = {d["device_id"]: d for d in json.loads(_cli(["devices", "list", "--json"], env))}
    out: dict[str, Credentials] = {}
    for spec in profile.devices:
        kept = state_dir / spec.id / "credentials.json"
        entry = registered.get(spec.id)
        shown: dict[str, Any]
        if entry is not None and (entry["tenant"], entry["site"]) != (profile.tenant, profile.site):
            raise OnboardingError(
                f"{spec.id} is registered for {entry['tenant']}/{entry['site']}, "
                f"the profile says {profile.tenant}/{profile.site}"
            )
        if entry is not None and kept.exists():
            shown = json.loads(kept.read_text())
            action = "kept"
        else:
            args = (
                ["devices", "rotate", spec.id]
                if entry is not None
                else ["devices", "add", spec.id, "--tenant", profile.tenant, "--site", profile.site]
            )
            shown = json.loads(_cli(args, env))
            _write_private(kept, json.dumps(shown, indent=2) + "\n")
            action = "rotated" if entry is not None else "added"
        print(f"onboarding: {spec.id} {action} ({profile.tenant}/{profile.site})", flush=True)
        out[spec.id] = Credentials(
            device_id=spec.id,
            tenant=shown["tenant"],
            site=shown["site"],
            username=shown["username"],
            password=shown["password"],
        )
    return out


class Fleet:
    """Runs the profile's devices on threads until the duration ends, then drains them."""

    def __init__(
        self,
        profile: Profile,
        creds: dict[str, Credentials],
        target: BrokerTarget,
        state_dir: Path,
    ) -> None:
        self.profile = profile
        self.t0 = time.monotonic()
        self.stop = threading.Event()
        self.drain = threading.Event()
        self.devices = [
            SimDevice(
                spec,
                creds[spec.id],
                target,
                state_dir,
                seed=profile.seed,
                t0=self.t0,
                stop=self.stop,
                drain=self.drain,
            )
            for spec in profile.devices
        ]
        self.threads = [
            threading.Thread(target=d.run, name=f"sim-{d.spec.id}", daemon=True)
            for d in self.devices
        ]

    def start(self) -> Fleet:
        for thread in self.threads:
            thread.start()
        return self

    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def finish(self, drain_s: float) -> None:
        """Stop sampling, let each device send what it buffered (up to ``drain_s``), stop."""
        self.drain.set()
        deadline = time.monotonic() + drain_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    def run(self, duration_s: float, drain_s: float, interrupted: threading.Event) -> None:
        """Run for ``duration_s`` (0: until ``interrupted``), then drain and stop."""
        self.start()
        end = time.monotonic() + duration_s if duration_s > 0 else float("inf")
        while time.monotonic() < end and not interrupted.is_set() and self.running():
            interrupted.wait(min(1.0, max(0.0, end - time.monotonic())))
        self.finish(drain_s)
