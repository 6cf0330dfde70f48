"""``python -m iotgw_sim``: run a simulated fleet, or compare its logs with the outbox.

python -m iotgw_sim fleet --profile demo            # against `make run`'s stack
python -m iotgw_sim compare --state-dir var/sim/demo --outbox var/outbox
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from .device import BrokerTarget
from .evidence import compare_all, format_reports
from .fleet import Fleet, OnboardingError, onboard
from .profile import DEFAULT_PROFILES, load_profile


def _target(args: argparse.Namespace) -> BrokerTarget:
    """Broker address and CA: flags first, then the dev device file of `make run`."""
    info: dict[str, object] = {}
    if args.dev_device and Path(args.dev_device).exists():
        info = json.loads(Path(args.dev_device).read_text())
    host = args.host or str(info.get("broker_host", "127.0.0.1"))
    port = args.port or int(str(info.get("mqtt_port", 8883)))
    ca_file = args.ca_file or str(info.get("ca_file", "var/pki/ca.crt"))
    return BrokerTarget(host=host, port=port, ca_file=ca_file)


def _cmd_fleet(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile, args.profiles)
    state_dir = args.state_dir or Path("var/sim") / profile.name
    target = _target(args)
    if not Path(target.ca_file).exists():
        print(f"no CA file {target.ca_file}: start the stack (`make run`) first", file=sys.stderr)
        return 2
    try:
        creds = onboard(profile, state_dir)
    except OnboardingError as exc:
        print(f"onboarding failed: {exc}", file=sys.stderr)
        return 2
    interrupted = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        interrupted.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(
        f"fleet {profile.name}: {len(profile.devices)} devices -> mqtts://{target.host}:"
        f"{target.port}; logs in {state_dir}/<device>/log.jsonl",
        flush=True,
    )
    fleet = Fleet(profile, creds, target, state_dir)
    fleet.run(args.duration, args.drain, interrupted)
    for device in fleet.devices:
        print(
            f"{device.spec.id}: outcome={device.outcome} boots={device.boots}"
            f" reconnects={device.reconnects} ring_dropped={device.ring.dropped}"
            f" lost_on_reboot={device.lost_on_reboot}",
            flush=True,
        )
    if args.outbox:
        return _report(state_dir, args.outbox, as_json=False)
    return 0


def _report(state_dir: Path, outbox: Path, *, as_json: bool) -> int:
    reports = compare_all(state_dir, outbox)
    if as_json:
        print(json.dumps([{**asdict(r), "ok": r.ok} for r in reports], indent=2))
    else:
        print(format_reports(reports))
    return 0 if reports and all(r.ok for r in reports) else 1


def _cmd_compare(args: argparse.Namespace) -> int:
    return _report(args.state_dir, args.outbox, as_json=args.json)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m iotgw_sim`` and ``iotgw-sim``."""
    parser = argparse.ArgumentParser(prog="iotgw_sim", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fleet", help="onboard and run a profile's devices")
    p.add_argument("--profile", default="demo")
    p.add_argument("--profiles", type=Path, default=DEFAULT_PROFILES, help="profiles TOML file")
    p.add_argument("--state-dir", type=Path, help="seq files, credentials, logs (var/sim/PROFILE)")
    p.add_argument("--dev-device", default="var/dev-device.json", help="broker address and CA")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--ca-file")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (0: until Ctrl-C)")
    p.add_argument("--drain", type=float, default=30.0, help="seconds to send what is buffered")
    p.add_argument("--outbox", type=Path, help="compare with this outbox at the end")
    p.set_defaults(func=_cmd_fleet)
    p = sub.add_parser("compare", help="compare device logs with the file sink's outbox")
    p.add_argument("--state-dir", type=Path, default=Path("var/sim/demo"))
    p.add_argument("--outbox", type=Path, default=Path("var/outbox"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_compare)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
