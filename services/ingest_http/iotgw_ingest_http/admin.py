"""The admin API: dead letters, spool summary, drain, pause and resume (docs/admin-api.md).

Mounted under ``/admin/v1`` by create_app only when a token is configured
(``IOTGW_ADMIN_TOKEN_FILE``, a Docker secret); without one every admin path
is 404. Every request needs ``Authorization: Bearer <token>``.

Pause and resume reach the forwarder through a Redis key it polls
(``<stream_key>:paused``); drain is a Redis key too (``<stream_key>:draining``)
that every ingest process (HTTP and MQTT) follows within a second, refusing
readings (HTTP 503, MQTT: not reading) until ``resume``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Annotated, Any

import msgspec
from iotgw_core import metrics
from iotgw_core.ingest import IngestPipeline
from iotgw_core.settings import load_settings
from iotgw_core.spool import DeadLetterFilter, SpoolError
from iotgw_core.stream import StreamEntry
from litestar import MediaType, Request, Response, Router, get, post
from msgspec import Meta
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode
MAX_PAGE = 1000
MAX_REPLAY = 5000


class AdminSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Admin API of the HTTP ingest service."""

    admin_token: Annotated[
        str,
        Meta(
            description="Bearer token of the admin API; use IOTGW_ADMIN_TOKEN_FILE (a secret)."
            " Empty: the admin API is off (404)."
        ),
    ] = ""


class Selection(msgspec.Struct, forbid_unknown_fields=True):
    """Which Dead records an operation means: ids, or a filter (at least one field)."""

    ids: list[str] | None = None
    tenant: str | None = None
    device_id: str | None = None
    reason: str | None = None
    since: float | None = None
    until: float | None = None
    limit: Annotated[int, Meta(ge=1, le=MAX_REPLAY)] = 1000
    all: bool = False

    def to_filter(self) -> DeadLetterFilter:
        """The spool's filter for this selection."""
        return DeadLetterFilter(
            ids=self.ids,
            tenant=self.tenant,
            device_id=self.device_id,
            reason=self.reason,
            since=self.since,
            until=self.until,
        )

    def is_empty(self) -> bool:
        """True when nothing narrows the selection (needs ``all: true``)."""
        return all(
            v is None
            for v in (self.ids, self.tenant, self.device_id, self.reason, self.since, self.until)
        )


def _json(status: int, body: Any) -> Response[bytes]:
    return Response(_encode(body), status_code=status, media_type=MediaType.JSON)


def _error(status: int, code: str, message: str) -> Response[bytes]:
    return _json(status, {"code": code, "message": message})


def _pipeline(request: Request[Any, Any, Any]) -> IngestPipeline:
    pipeline: IngestPipeline = request.app.state["pipeline"]
    return pipeline


def _pause_key(pipeline: IngestPipeline) -> str:
    return f"{pipeline.stream.key}:paused"


def _float(value: str | None, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a Unix time in seconds") from None


async def list_dead_letters(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Dead letters, oldest first; ``next`` is the cursor of the following page."""
    query = request.query_params
    try:
        flt = DeadLetterFilter(
            tenant=query.get("tenant") or None,
            device_id=query.get("device_id") or None,
            reason=query.get("reason") or None,
            since=_float(query.get("since"), "since"),
            until=_float(query.get("until"), "until"),
        )
        after = int(query.get("after") or 0)
        limit = int(query.get("limit") or 100)
    except ValueError as exc:
        return _error(400, "invalid_query", str(exc))
    if not 1 <= limit <= MAX_PAGE:
        return _error(400, "invalid_query", f"limit must be 1..{MAX_PAGE}")
    spool = _pipeline(request).spool
    items = await asyncio.to_thread(spool.list_dead, flt, after_rid=after, limit=limit)
    return _json(
        200,
        {
            "items": [_letter(item) for item in items],
            "next": items[-1].rid if len(items) == limit else None,
        },
    )


def _letter(item: Any) -> dict[str, Any]:
    return {
        "id": item.id,
        "rid": item.rid,
        "tenant": item.tenant,
        "device_id": item.device_id,
        "seq": item.seq,
        "attempts": item.attempts,
        "reason": item.reason,
        "created_at": item.created_at,
        "dead_at": item.dead_at,
        "size": item.size,
    }


async def _selection(request: Request[Any, Any, Any]) -> Selection | Response[bytes]:
    try:
        body = await request.body()
        selection = msgspec.json.decode(body or b"{}", type=Selection)
    except msgspec.DecodeError as exc:
        return _error(400, "invalid_selection", str(exc))
    if selection.is_empty() and not selection.all:
        return _error(
            400, "invalid_selection", "name ids or a filter, or send all: true for every record"
        )
    if selection.ids is not None and len(selection.ids) > 500:
        return _error(400, "invalid_selection", "at most 500 ids at once")
    return selection


async def replay_dead_letters(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Dead -> Enqueued (attempts reset), handed to the stream; at most ``limit`` a call."""
    selection = await _selection(request)
    if isinstance(selection, Response):
        return selection
    pipeline = _pipeline(request)
    try:
        records = await asyncio.to_thread(
            pipeline.spool.replay, selection.to_filter(), selection.limit
        )
    except SpoolError as exc:
        return _error(503, "spool_unavailable", str(exc))
    entries = [StreamEntry(r.rid, r.id, r.tenant, r.device_id, r.traceparent) for r in records]
    handed = True
    try:
        await pipeline.stream.add_many(entries)
    except (RedisError, OSError) as exc:
        # Enqueued in the spool already: the forwarder's reconciler hands them over.
        log.warning("replay: stream hand-off failed (%s); the reconciler will do it", exc)
        handed = False
    if records:
        log.info("admin replay: %d dead letters back to Enqueued", len(records))
    return _json(
        200,
        {"replayed": len(records), "ids": [r.id for r in records], "handed_to_stream": handed},
    )


async def purge_dead_letters(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Delete Dead records for good."""
    selection = await _selection(request)
    if isinstance(selection, Response):
        return selection
    spool = _pipeline(request).spool
    try:
        purged = await asyncio.to_thread(spool.purge, selection.to_filter(), selection.limit)
    except SpoolError as exc:
        return _error(503, "spool_unavailable", str(exc))
    if purged:
        metrics.PRUNED.labels("purge").inc(purged)
        log.info("admin purge: %d dead letters deleted", purged)
    return _json(200, {"purged": purged})


async def _state(pipeline: IngestPipeline) -> dict[str, Any]:
    try:
        paused: bool | None = bool(await pipeline.redis.exists(_pause_key(pipeline)))
    except (RedisError, OSError):
        paused = None
    return {"draining": pipeline.draining, "paused": paused}


async def spool_summary(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Counts by state, bytes, oldest ages, Dead by reason, and the drain/pause state."""
    pipeline = _pipeline(request)
    summary = await asyncio.to_thread(pipeline.spool.summary)
    return _json(200, {**summary, **(await _state(pipeline))})


async def drain(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Refuse new readings (503) until resume; what is spooled still drains to the sink."""
    pipeline = _pipeline(request)
    try:
        await pipeline.set_operator_drain(True)
    except (RedisError, OSError) as exc:
        return _error(503, "stream_unavailable", f"cannot set the drain flag: {exc}")
    log.warning("admin drain: every ingest refuses new readings")
    return _json(200, await _state(pipeline))


async def pause(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Stop the forwarder delivering (records wait in the spool)."""
    pipeline = _pipeline(request)
    try:
        await pipeline.redis.set(_pause_key(pipeline), "1")
    except (RedisError, OSError) as exc:
        return _error(503, "stream_unavailable", f"cannot set the pause flag: {exc}")
    log.warning("admin pause: forwarder delivery paused")
    return _json(200, await _state(pipeline))


async def resume(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Undo pause and drain: the forwarder delivers and ingest accepts again."""
    pipeline = _pipeline(request)
    try:
        await pipeline.redis.delete(_pause_key(pipeline))
        await pipeline.set_operator_drain(False)
    except (RedisError, OSError) as exc:
        return _error(503, "stream_unavailable", f"cannot clear the pause/drain flags: {exc}")
    log.warning("admin resume: accepting and delivering")
    return _json(200, await _state(pipeline))


def admin_router(settings: AdminSettings | None = None) -> Router | None:
    """The admin router, or None when no token is configured (the API stays off)."""
    admin = settings if settings is not None else load_settings(AdminSettings)
    token = admin.admin_token.strip()
    if not token:
        return None
    expected = f"Bearer {token}".encode()

    async def check_token(request: Request[Any, Any, Any]) -> Response[bytes] | None:
        given = request.headers.get("authorization", "").encode()
        if hmac.compare_digest(given, expected):
            return None
        code = "unauthorized"
        metrics.AUTH_FAILURES.labels("admin", code).inc()
        return _error(401, code, "the admin API needs Authorization: Bearer <admin token>")

    return Router(
        path="/admin/v1",
        before_request=check_token,
        route_handlers=[
            get("/dead-letters")(list_dead_letters),
            post("/dead-letters/replay", status_code=200)(replay_dead_letters),
            post("/dead-letters/purge", status_code=200)(purge_dead_letters),
            get("/spool")(spool_summary),
            post("/drain", status_code=200)(drain),
            post("/pause", status_code=200)(pause),
            post("/resume", status_code=200)(resume),
        ],
    )


def _op(op_id: str, summary: str, ok: str, **extra: Any) -> dict[str, Any]:
    err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "operationId": op_id,
        "summary": summary,
        "tags": ["admin"],
        "security": [{"adminToken": []}],
        **extra,
        "responses": {
            "200": {
                "description": ok,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "400": {"description": "Bad query or selection.", **err},
            "401": {"description": "Missing or wrong admin token.", **err},
            "404": {"description": "The admin API is off (no IOTGW_ADMIN_TOKEN_FILE)."},
        },
    }


_SELECTION_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "ids": {"type": "array", "items": {"type": "string"}, "maxItems": 500},
                    "tenant": {"type": "string"},
                    "device_id": {"type": "string"},
                    "reason": {"type": "string", "description": "Prefix of the last error."},
                    "since": {"type": "number", "description": "Dead at or after (Unix s)."},
                    "until": {"type": "number", "description": "Dead before (Unix s)."},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_REPLAY},
                    "all": {"type": "boolean", "description": "Select every Dead record."},
                },
            },
            "example": {"device_id": "stm32-01", "reason": "payload_too_large", "limit": 1000},
        }
    },
}


def _q(name: str, kind: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": kind},
    }


def openapi_paths() -> dict[str, Any]:
    """The admin paths of the OpenAPI document (docs/admin-api.md)."""
    return {
        "/admin/v1/dead-letters": {
            "get": _op(
                "listDeadLetters",
                "Dead letters, oldest first, paginated by cursor",
                "`items` and `next` (the `after` of the following page, or null).",
                parameters=[
                    _q("tenant", "string", "Only this tenant."),
                    _q("device_id", "string", "Only this device."),
                    _q("reason", "string", "Reason prefix, e.g. payload_too_large."),
                    _q("since", "number", "Dead at or after (Unix seconds)."),
                    _q("until", "number", "Dead before (Unix seconds)."),
                    _q("after", "integer", "Cursor: `next` of the previous page."),
                    _q("limit", "integer", f"Page size, 1..{MAX_PAGE} (default 100)."),
                ],
            )
        },
        "/admin/v1/dead-letters/replay": {
            "post": _op(
                "replayDeadLetters",
                "Back to Enqueued (attempts reset) and handed to the stream",
                "`replayed`, `ids`, `handed_to_stream`.",
                requestBody=_SELECTION_BODY,
            )
        },
        "/admin/v1/dead-letters/purge": {
            "post": _op(
                "purgeDeadLetters",
                "Delete Dead records for good",
                "`purged`.",
                requestBody=_SELECTION_BODY,
            )
        },
        "/admin/v1/spool": {
            "get": _op(
                "spoolSummary",
                "Counts by state, bytes, oldest ages, Dead by reason, drain/pause state",
                "The summary.",
            )
        },
        "/admin/v1/drain": {
            "post": _op("drain", "Refuse new readings (503) until resume", "The state.")
        },
        "/admin/v1/pause": {"post": _op("pause", "Stop the forwarder delivering", "The state.")},
        "/admin/v1/resume": {"post": _op("resume", "Undo pause and drain", "The state.")},
    }


SECURITY_SCHEMES = {
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The admin token (IOTGW_ADMIN_TOKEN_FILE).",
    }
}
