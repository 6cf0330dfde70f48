"""``make bench``: run benchmark groups, print figures, merge them into var/bench/results.json.

Each group is a module ``tests.bench.bench_<name>`` with ``run() -> dict[str, float]``.
``--group all`` runs every group found.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path

import tests.bench as package

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "var" / "bench" / "results.json"


def groups() -> list[str]:
    """Names of every benchmark group."""
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(package.__path__)
        if m.name.startswith("bench_")
    )


def main() -> int:
    """Run the chosen groups and record their figures."""
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--group", default="all", help=f"one of: all, {', '.join(groups())}")
    args = parser.parse_args()
    chosen = groups() if args.group == "all" else [args.group]
    unknown = set(chosen) - set(groups())
    if unknown:
        print(f"unknown benchmark group(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in chosen:
        print(f"== bench {name}", flush=True)
        figures = importlib.import_module(f"tests.bench.bench_{name}").run()
        results.update(figures)
        RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        for key, value in figures.items():
            print(f"{key} = {value}")
    print(f"figures written to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
