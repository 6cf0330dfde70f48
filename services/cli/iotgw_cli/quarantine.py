"""`iotgw quarantine list`: what the ingest services would not take, and why."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from iotgw_core.quarantine import Quarantine

from .paths import Paths


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `iotgw quarantine ...`."""
    parser = sub.add_parser("quarantine", help="messages kept out of the spool")
    cmds = parser.add_subparsers(dest="quarantine_cmd", required=True)
    p = cmds.add_parser("list", help="newest entries first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--reason", help="only entries of this reason code")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_list)


def _cmd_list(args: argparse.Namespace, paths: Paths) -> int:
    if not paths.quarantine.exists():
        print("[]" if args.json else "quarantine is empty")
        return 0
    store = Quarantine(paths.quarantine)
    try:
        entries = store.list(limit=args.limit, reason=args.reason)
        counts = store.counts()
    finally:
        store.close()
    rows: list[dict[str, Any]] = [
        {
            "at": dt.datetime.fromtimestamp(e.at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "source": e.source,
            "topic": e.topic,
            "reason": e.reason,
            "message": e.message,
            "client_id": e.client_id,
            "size": e.size,
            "head": e.payload_head.decode("utf-8", errors="replace"),
        }
        for e in entries
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("by reason: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for r in rows:
        print(f"{r['at']}  {r['reason']:<20} {r['topic']}  ({r['size']} B, {r['client_id']})")
        print(f"    {r['message']}")
        print(f"    {r['head'][:120]!r}")
    return 0
