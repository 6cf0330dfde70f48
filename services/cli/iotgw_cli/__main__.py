"""The operator's CLI: ``iotgw devices ...``, ``iotgw quarantine ...``, ``iotgw broker ...``.

Each command group is its own module with a ``register(subparsers)`` function;
a new group (e.g. ``admin``) is one more module added to GROUPS.
"""

from __future__ import annotations

import argparse
import sys

from iotgw_core.registry import RegistryError

from . import admin, broker, devices, quarantine
from .devices import CliError
from .paths import Paths

GROUPS = (devices, quarantine, broker, admin)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command group."""
    parser = argparse.ArgumentParser(prog="iotgw", description=__doc__)
    sub = parser.add_subparsers(dest="group", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit status 1 with a message on a refused command."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args, Paths.from_env())
    except (CliError, RegistryError) as exc:
        print(f"iotgw: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
