"""``iotgw admin ...``: the admin API from a shell (docs/admin-api.md).

Talks HTTP to the ingest service's ``/admin/v1`` (``IOTGW_ADMIN_URL``) with
the admin token (``IOTGW_ADMIN_TOKEN_FILE``). Long replays go in chunks with a
progress bar on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated, Any

import msgspec
from iotgw_core.settings import SettingsError, load_settings
from msgspec import Meta

from .devices import CliError


class AdminCliSettings(msgspec.Struct, kw_only=True, frozen=True):
    """CLI: where the admin API is and its token."""

    admin_url: Annotated[
        str, Meta(description="CLI: base URL of the HTTP ingest service (admin API).")
    ] = "http://127.0.0.1:8000"
    admin_token: Annotated[
        str, Meta(description="CLI: the admin token; use IOTGW_ADMIN_TOKEN_FILE.")
    ] = ""


class AdminClient:
    """A tiny JSON client of /admin/v1 (standard library only)."""

    def __init__(self, base_url: str, token: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/") + "/admin/v1"
        self.token = token
        self.timeout_s = timeout_s

    def call(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> Any:
        """One request; CliError with the API's code and message on a refusal."""
        url = self.base_url + path
        if query:
            clean = {k: v for k, v in query.items() if v is not None}
            url += "?" + urllib.parse.urlencode(clean)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise CliError(
                    f"{url}: 404 - the admin API is off (set IOTGW_ADMIN_TOKEN_FILE on the"
                    " ingest service)"
                ) from None
            try:
                detail = json.loads(exc.read())
                text = f"{detail.get('code')}: {detail.get('message')}"
            except ValueError:
                text = exc.reason
            raise CliError(f"{url}: {exc.code} {text}") from None
        except urllib.error.URLError as exc:
            raise CliError(f"{url}: cannot connect ({exc.reason})") from None


def _client() -> AdminClient:
    try:
        settings = load_settings(AdminCliSettings)
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    if not settings.admin_token:
        raise CliError("no admin token: set IOTGW_ADMIN_TOKEN_FILE (or IOTGW_ADMIN_TOKEN)")
    return AdminClient(settings.admin_url, settings.admin_token)


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant")
    p.add_argument("--device", dest="device_id")
    p.add_argument("--reason", help="reason prefix, e.g. payload_too_large")
    p.add_argument("--since", type=float, help="dead at or after (Unix seconds)")
    p.add_argument("--until", type=float, help="dead before (Unix seconds)")


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        k: getattr(args, k)
        for k in ("tenant", "device_id", "reason", "since", "until")
        if getattr(args, k) is not None
    }


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `iotgw admin ...`."""
    parser = sub.add_parser("admin", help="dead letters, spool summary, drain/pause/resume")
    cmds = parser.add_subparsers(dest="admin_cmd", required=True)
    cmds.add_parser("spool", help="counts by state, bytes, oldest ages").set_defaults(
        func=_cmd_spool
    )
    for name, helptext in (
        ("drain", "ingest refuses new readings (503) until resume"),
        ("pause", "the forwarder stops delivering"),
        ("resume", "undo pause and drain"),
    ):
        cmds.add_parser(name, help=helptext).set_defaults(func=_cmd_state, action=name)
    dead = cmds.add_parser("dead", help="dead letters").add_subparsers(
        dest="dead_cmd", required=True
    )
    p = dead.add_parser("list", help="oldest first")
    _filter_args(p)
    p.add_argument("--limit", type=int, default=100, help="most rows to show")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_list)
    for name in ("replay", "purge"):
        p = dead.add_parser(name, help=f"{name} dead letters by id or filter")
        p.add_argument("--id", dest="ids", action="append", help="a record id (repeatable)")
        _filter_args(p)
        p.add_argument("--all", action="store_true", help="every dead letter")
        p.add_argument("--chunk", type=int, default=500, help="records per request")
        p.set_defaults(func=_cmd_replay_purge, action=name)


def _cmd_spool(args: argparse.Namespace, paths: object) -> int:
    print(json.dumps(_client().call("GET", "/spool"), indent=2))
    return 0


def _cmd_state(args: argparse.Namespace, paths: object) -> int:
    print(json.dumps(_client().call("POST", f"/{args.action}")))
    return 0


def _cmd_list(args: argparse.Namespace, paths: object) -> int:
    client = _client()
    rows: list[dict[str, Any]] = []
    after = 0
    while len(rows) < args.limit:
        page = client.call(
            "GET",
            "/dead-letters",
            query={**_filters(args), "after": after, "limit": min(1000, args.limit - len(rows))},
        )
        rows.extend(page["items"])
        if page["next"] is None:
            break
        after = page["next"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no dead letters")
        return 0
    for r in rows:
        dead_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["dead_at"]))
        print(f"{dead_at}  {r['id']}  {r['tenant']}/{r['device_id']}  {r['reason'][:80]}")
    return 0


def _count(client: AdminClient, filters: dict[str, Any]) -> int:
    total, after = 0, 0
    for _ in range(10_000):  # bounded walk: 10 million rows
        page = client.call("GET", "/dead-letters", query={**filters, "after": after, "limit": 1000})
        total += len(page["items"])
        if page["next"] is None:
            break
        after = page["next"]
    return total


class ProgressBar:
    """``[#####.....]  1200/5000 records`` on stderr, redrawn in place."""

    def __init__(self, total: int, label: str, width: int = 30) -> None:
        self.total = max(total, 0)
        self.label = label
        self.width = width
        self.done = 0

    def advance(self, count: int) -> None:
        """Count ``count`` more and redraw."""
        self.done += count
        share = 1.0 if self.total == 0 else min(1.0, self.done / self.total)
        filled = int(share * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {self.label}")
        sys.stderr.flush()

    def finish(self) -> None:
        """End the line."""
        sys.stderr.write("\n")


def _cmd_replay_purge(args: argparse.Namespace, paths: object) -> int:
    client = _client()
    filters = _filters(args)
    if not args.ids and not filters and not args.all:
        raise CliError("name --id, a filter (--device, --reason, ...) or --all")
    key = "replayed" if args.action == "replay" else "purged"
    chunk = max(1, min(args.chunk, 500))
    done = 0
    if args.ids:
        bar = ProgressBar(len(args.ids), f"{key}")
        for start in range(0, len(args.ids), chunk):
            ids = args.ids[start : start + chunk]
            result = client.call("POST", f"/dead-letters/{args.action}", {"ids": ids})
            done += int(result[key])
            bar.advance(len(ids))
    else:
        bar = ProgressBar(_count(client, filters), key)
        body = {**filters, "limit": chunk, **({"all": True} if args.all else {})}
        for _ in range(100_000):  # bounded: each round takes up to `chunk` records
            result = client.call("POST", f"/dead-letters/{args.action}", body)
            n = int(result[key])
            done += n
            bar.advance(n)
            if n < chunk or done >= bar.total:  # replayed ones may go Dead again
                break
    bar.finish()
    print(json.dumps({key: done}))
    return 0
