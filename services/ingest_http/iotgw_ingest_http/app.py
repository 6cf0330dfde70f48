"""HTTP ingest: POST /v1/ingest/{device_id} into the durable spool (Litestar).

A 202 is sent only after the reading's spool transaction committed. Errors
are ``{"code", "message"}`` with the status the contract names
(docs/http-api.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import msgspec
from iotgw_core import metrics, telemetry
from iotgw_core.auth import AuthError, HttpGuard, RateLimited
from iotgw_core.ids import uuid7_str
from iotgw_core.ingest import IngestPipeline, Refused
from iotgw_core.process import place_helpers
from iotgw_core.spool import AppendResult, NewRecord, SpoolError
from iotgw_core.validation import (
    ValidationFailure,
    check_device_id,
    decode_json,
    parse_reading,
    validate_reading,
)
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from redis.exceptions import RedisError

from .admin import admin_router
from .openapi import build_openapi
from .settings import IngestHttpSettings

log = logging.getLogger(__name__)
_Parsed = TypeVar("_Parsed")
_Appended = TypeVar("_Appended")
SOURCE: Final = "http"
_encode = msgspec.json.Encoder().encode
# Per-request counts, kept as plain ints and added to their counters at each scrape.
_RECEIVED = metrics.Tally(metrics.EVENTS_RECEIVED.labels(SOURCE))
_ACCEPTED = metrics.Tally(metrics.EVENTS_ACCEPTED.labels(SOURCE, "telemetry"))
_DUPLICATE = metrics.Tally(metrics.EVENTS_DUPLICATE.labels(SOURCE))

SWAGGER_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>iot-gateway HTTP ingest</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/docs/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""


def error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response[bytes]:
    """An error answer in the contract's shape."""
    return Response(
        _encode({"code": code, "message": message}),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _json(status: int, body: Any) -> Response[bytes]:
    return Response(_encode(body), status_code=status, media_type=MediaType.JSON)


def _refused(exc: Refused) -> Response[bytes]:
    metrics.EVENTS_REJECTED.labels(SOURCE, exc.code).inc()
    return error(503, exc.code, exc.message, {"Retry-After": str(exc.retry_after_s)})


def _json_and_traceparent(request: Request[Any, Any, Any]) -> tuple[bool, str | None]:
    """Whether the body is declared JSON, and the ``traceparent`` header: both read in
    one pass over the ASGI scope's headers (cheaper than building Headers)."""
    ctype = traceparent = None
    for key, value in request.scope["headers"]:
        if key == b"content-type" and ctype is None:
            ctype = bytes(value)
        elif key == b"traceparent" and traceparent is None:
            traceparent = bytes(value).decode("latin-1")
    return ctype == b"application/json" or _is_json(ctype or b""), traceparent


def _is_json(ctype: bytes) -> bool:
    # Past what nearly every client sends (application/json): parameters, case, +json.
    media = ctype.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


_Origin = tuple[str | None, str | None]  # tenant and site; None: the gateway's own
_NO_ORIGIN: Final[_Origin] = (None, None)


async def _read_checked(
    request: Request[Any, Any, Any],
    pipeline: IngestPipeline,
    device_id: str,
    parse: Callable[[bytes], _Parsed],
) -> tuple[_Parsed, _Origin, str | None] | Response[bytes]:
    """Common front half of every ingest path: the parsed body, the device's tenant
    and site, and the request's ``traceparent`` header; or the error Response."""
    _RECEIVED.count += 1
    try:
        check_device_id(device_id)
        pipeline.check_admission()
    except ValidationFailure as exc:
        return _invalid(exc)
    except Refused as exc:
        return _refused(exc)
    is_json, traceparent = _json_and_traceparent(request)
    if not is_json:
        metrics.EVENTS_REJECTED.labels(SOURCE, "unsupported_media_type").inc()
        return error(415, "unsupported_media_type", "Content-Type must be application/json")
    body = await request.body()  # over the handler's limit: RequestEntityTooLarge -> 413
    origin = _authorize(request, device_id, body)
    if isinstance(origin, Response):
        return origin
    try:
        return parse(body), origin, traceparent
    except ValidationFailure as exc:
        return _invalid(exc)


def _invalid(exc: ValidationFailure) -> Response[bytes]:
    metrics.EVENTS_REJECTED.labels(SOURCE, exc.code).inc()
    return error(400, exc.code, exc.message)


def _authorize(
    request: Request[Any, Any, Any], device_id: str, body: bytes
) -> _Origin | Response[bytes]:
    """Tenant and site of the authenticated device (registry), or 401/403/429 as its
    credential and rate limit say; the gateway's own (None, None) while auth is off."""
    guard: HttpGuard = request.app.state["guard"]
    if not guard.enforcing:
        return _NO_ORIGIN
    try:
        device = guard.check(device_id, request.headers, body)
    except AuthError as exc:
        metrics.AUTH_FAILURES.labels(SOURCE, exc.code).inc()
        metrics.EVENTS_REJECTED.labels(SOURCE, exc.code).inc()
        challenge = {"WWW-Authenticate": 'Bearer realm="iotgw"'} if exc.status == 401 else None
        return error(exc.status, exc.code, exc.message, challenge)
    except RateLimited as exc:
        metrics.EVENTS_REJECTED.labels(SOURCE, "rate_limited").inc()
        return error(
            429,
            "rate_limited",
            f"device {device_id!r} is over its rate limit; retry later",
            {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))},
        )
    return _NO_ORIGIN if device is None else (device.tenant, device.site)


async def _durably(
    pipeline: IngestPipeline, append: Awaitable[_Appended], count: int
) -> _Appended | Response[bytes]:
    """The append's answer once committed, or 503 if the spool cannot store now."""
    try:
        return await append
    except SpoolError as exc:
        return _spool_unavailable(pipeline, exc, count)


def _spool_unavailable(pipeline: IngestPipeline, exc: SpoolError, count: int) -> Response[bytes]:
    log.error("spool append failed: %s", exc)
    metrics.EVENTS_REJECTED.labels(SOURCE, "spool_unavailable").inc(count)
    return error(
        503,
        "spool_unavailable",
        "the spool cannot store records now; retry later",
        {"Retry-After": str(pipeline.retry_after_s)},
    )


def _count_stored(stored: int, duplicates: int) -> None:
    """Count readings the spool took: ``stored`` in all, ``duplicates`` of them repeats."""
    _DUPLICATE.count += duplicates
    _ACCEPTED.count += stored - duplicates


async def _commit(
    pipeline: IngestPipeline, records: list[NewRecord]
) -> list[AppendResult] | Response[bytes]:
    results = await _durably(pipeline, pipeline.submit(records), len(records))
    if not isinstance(results, Response):
        _count_stored(len(results), sum([res.duplicate for res in results]))
    return results


# App state by subscription: attribute access to a State first fails a normal
# attribute lookup (building an AttributeError) before its __getattr__ answers.
def _pipeline(request: Request[Any, Any, Any]) -> IngestPipeline:
    pipeline: IngestPipeline = request.app.state["pipeline"]
    return pipeline


def _settings(request: Request[Any, Any, Any]) -> IngestHttpSettings:
    settings: IngestHttpSettings = request.app.state["settings"]
    return settings


async def ingest(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Ingest one reading; 202 once durable, 200 once delivered in ack mode sink."""
    # The path parameter read from the routed scope: declaring it as a handler
    # argument costs a signature-model pass per request on the hot path.
    device_id: str = request.path_params["device_id"]
    pipeline = _pipeline(request)
    if not pipeline.seals_in_writer:
        return await _ingest_on_loop(request, pipeline, device_id)
    # The default (tracing off): the body's validation, the id and the envelope are
    # done in the spool writer process, beside the commit, instead of on the event
    # loop that every request waits for (docs/spool.md). Here in the handler itself,
    # not in a coroutine of its own (nor through _durably, nor _stored outside ack
    # mode sink): each coroutine between the handler and the commit's future costs
    # its creation and a resumption per request.
    checked = await _read_checked(request, pipeline, device_id, _as_is)
    if isinstance(checked, Response):
        return checked
    body, (tenant, site), traceparent = checked
    reading = pipeline.raw_reading(
        body, device_id=device_id, tenant=tenant, site=site, traceparent=traceparent
    )
    try:
        answers = await pipeline.submit_readings((reading,))
    except SpoolError as exc:
        return _spool_unavailable(pipeline, exc, 1)
    outcome, result = answers[0]
    if result is None:
        if outcome.code == "internal_error":
            log.error("the spool writer could not seal a reading of %r", device_id)
            return error(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "internal error")
        metrics.EVENTS_REJECTED.labels(SOURCE, outcome.code).inc()
        return error(400, str(outcome.code), outcome.message)
    _count_stored(1, result.duplicate)
    if pipeline.ack_mode == "sink":
        return await _stored(request, pipeline, result)
    return _enqueued(result)


def _as_is(body: bytes) -> bytes:
    return body


async def _ingest_on_loop(
    request: Request[Any, Any, Any], pipeline: IngestPipeline, device_id: str
) -> Response[bytes]:
    """The same answers as ingest's writer-side path, with the validation and the
    envelope done here (with tracing on: the ingest span opens around them)."""
    checked = await _read_checked(request, pipeline, device_id, parse_reading)
    if isinstance(checked, Response):
        return checked
    reading, (tenant, site), traceparent = checked
    record = pipeline.build(
        reading, device_id=device_id, tenant=tenant, site=site, traceparent=traceparent
    )
    results = await _commit(pipeline, [record])
    if isinstance(results, Response):
        return results
    return await _stored(request, pipeline, results[0])


async def _stored(
    request: Request[Any, Any, Any], pipeline: IngestPipeline, result: AppendResult
) -> Response[bytes]:
    """202 for a stored reading; 200 once delivered in ack mode sink (within the timeout)."""
    if pipeline.ack_mode == "sink" and await pipeline.wait_delivered(
        (result,), _settings(request).sink_ack_timeout_s
    ):
        return _json(200, {"id": result.id, "status": "delivered", "duplicate": result.duplicate})
    return _enqueued(result)


def _enqueued(result: AppendResult) -> Response[bytes]:
    return _json(202, {"id": result.id, "status": "enqueued", "duplicate": result.duplicate})


async def ingest_batch(
    request: Request[Any, Any, Any], device_id: FromPath[str]
) -> Response[bytes]:
    """Ingest a list of readings in one transaction, with a result per reading."""
    pipeline = _pipeline(request)
    settings = _settings(request)
    checked = await _read_checked(request, pipeline, device_id, decode_json)
    if isinstance(checked, Response):
        return checked
    decoded, (tenant, site), traceparent = checked
    if not isinstance(decoded, list):
        metrics.EVENTS_REJECTED.labels(SOURCE, "invalid_batch").inc()
        return error(400, "invalid_batch", "batch body must be a JSON array of readings")
    if not decoded:
        metrics.EVENTS_REJECTED.labels(SOURCE, "empty_batch").inc()
        return error(400, "empty_batch", "batch must hold at least one reading")
    if len(decoded) > settings.http_max_batch_items:
        metrics.EVENTS_REJECTED.labels(SOURCE, "too_many_items").inc()
        return error(
            400, "too_many_items", f"batch must hold <= {settings.http_max_batch_items} readings"
        )
    if len(decoded) > 1:
        _RECEIVED.count += len(decoded) - 1
    items: list[dict[str, Any]] = []
    records: list[NewRecord] = []
    slots: list[int] = []
    for index, obj in enumerate(decoded):
        try:
            reading = validate_reading(obj)
        except ValidationFailure as exc:
            metrics.EVENTS_REJECTED.labels(SOURCE, exc.code).inc()
            items.append(
                {"index": index, "status": "rejected", "code": exc.code, "message": exc.message}
            )
            continue
        records.append(
            pipeline.build(
                reading, device_id=device_id, tenant=tenant, site=site, traceparent=traceparent
            )
        )
        slots.append(index)
        items.append({"index": index})
    if not records:
        return _json(
            400,
            {
                "code": "no_valid_reading",
                "message": "no reading of the batch is valid; see results",
                "accepted": 0,
                "duplicates": 0,
                "rejected": len(items),
                "results": items,
            },
        )
    results = await _commit(pipeline, records)
    if isinstance(results, Response):
        return results
    delivered = pipeline.ack_mode == "sink" and await pipeline.wait_delivered(
        results, settings.sink_ack_timeout_s
    )
    for index, res in zip(slots, results, strict=True):
        items[index] = {
            "index": index,
            "status": "delivered" if delivered else "enqueued",
            "id": res.id,
            "duplicate": res.duplicate,
        }
    answer = {
        "accepted": len(results),
        "duplicates": sum(1 for r in results if r.duplicate),
        "rejected": len(items) - len(results),
        "results": items,
    }
    return _json(200 if delivered else 202, answer)


async def healthz(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Status of spool, stream and sink."""
    pipeline = _pipeline(request)
    spool: dict[str, Any]
    try:
        totals = pipeline.spool.totals()
        spool = {
            "status": "full" if pipeline.full else "ok",
            "records": totals.records,
            "bytes": totals.bytes,
            "high_water_records": pipeline.marks.high_records,
            "high_water_bytes": pipeline.marks.high_bytes,
        }
    except Exception as exc:
        spool = {"status": "failing", "error": str(exc)}
    stream: dict[str, Any]
    try:
        stream = {"status": "ok", "length": await pipeline.stream.length()}
    except (RedisError, OSError) as exc:
        stream = {"status": "down", "error": str(exc)}
    sink = await pipeline.forwarder_status() if stream["status"] == "ok" else {"status": "unknown"}
    statuses = {spool["status"], stream["status"], str(sink.get("status"))}
    overall = "ok" if statuses <= {"ok"} else "degraded"
    if spool["status"] == "failing":
        overall = "failing"
    body = {
        "status": overall,
        "draining": pipeline.draining,
        "auth": request.app.state["guard"].status(),
        "components": {"spool": spool, "stream": stream, "sink": sink},
    }
    return _json(503 if overall == "failing" else 200, body)


async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 while readings are accepted, 503 (with Retry-After) while draining or full."""
    try:
        _pipeline(request).check_admission()
    except Refused as exc:
        return error(503, exc.code, exc.message, {"Retry-After": str(exc.retry_after_s)})
    return _json(200, {"status": "ready"})


async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus exposition of this process's metrics (OpenMetrics with exemplars if asked)."""
    body, content_type = telemetry.metrics_payload(request.headers.get("accept"))
    return Response(body, media_type=content_type)


async def swagger_ui() -> str:
    """Swagger UI for the OpenAPI document."""
    return SWAGGER_HTML


async def openapi_json() -> Response[bytes]:
    """The OpenAPI document (also committed as docs/openapi.json)."""
    return _json(200, build_openapi())


async def bench_noop(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Reads the body and answers 202: the ceiling that `make bench` compares to."""
    await request.body()
    return _json(202, {"status": "noop"})


async def bench_commit(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The floor of any durable endpoint in this process: body -> spool commit -> 202.

    No validation, envelope, authentication or metrics: the request body is
    stored as it came, under a fresh id, through the same group commit and
    stream hand-off as ingest. `make bench` compares it to the no-op to show
    what the durability mechanics alone cost (never enabled in production).
    """
    pipeline = _pipeline(request)
    record = NewRecord(
        id=uuid7_str(),
        tenant=pipeline.settings.tenant,
        device_id="bench-commit",
        seq=None,
        body=await request.body(),
        traceparent=None,
    )
    results = await pipeline.writer.append_many((record,))
    return _json(202, {"id": results[0].id, "status": "enqueued", "duplicate": False})


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    codes = {
        404: "not_found",
        405: "method_not_allowed",
        413: "body_too_large",
    }
    code = codes.get(status, "bad_request" if status < 500 else "internal_error")
    message = exc.detail
    if status == 413:
        limit = (
            _settings(request).http_max_batch_bytes
            if request.url.path.endswith("/batch")
            else _settings(request).http_max_body_bytes
        )
        message = f"body must be <= {limit} bytes"
        metrics.EVENTS_REJECTED.labels(SOURCE, code).inc()
    return error(status, code, message, getattr(exc, "headers", None))


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return error(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "internal error")


_ROUTE_RE = re.compile(r"^/v1/ingest/[^/]+(/batch)?$")


def _span_details(scope: Any) -> tuple[str, dict[str, Any]]:
    # Span names by route template, not by path: one name per route, not per device.
    # (the middleware runs before routing, so the template is derived from the path).
    template = _ROUTE_RE.sub(r"/v1/ingest/{device_id}\1", scope.get("path", ""))
    return f"{scope.get('method', 'HTTP')} {template}", {"http.route": template}


def create_app(settings: IngestHttpSettings, pipeline: IngestPipeline | None = None) -> Litestar:
    """Build the app; the lifespan starts the pipeline (spool writer, hand-off)."""
    plugins: list[Any] = []
    if telemetry.setup("ingest-http"):
        from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

        # The HTTP server span: its parent is the request's `traceparent` header.
        config = OpenTelemetryConfig(
            exclude=["^/metrics", "^/healthz", "^/readyz", "^/docs"],
            exclude_spans=["receive", "send"],
            scope_span_details_extractor=_span_details,
        )
        plugins.append(OpenTelemetryPlugin(config))
    pipe = pipeline or IngestPipeline(
        settings,
        source=SOURCE,
        commit_max_batch=settings.commit_max_batch,
        retry_after_s=settings.retry_after_s,
        ack_mode=settings.ack_mode,
    )

    guard = HttpGuard(settings.auth_mode, settings.registry_path, settings.auth_replay_window_s)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        place_helpers(asyncio.get_running_loop())  # IOTGW_*_LOOP_CPUS
        await pipe.start()
        if not guard.enforcing:
            log.warning(
                "AUTHENTICATION IS OFF (IOTGW_AUTH_MODE=none): any client may post as any"
                " device. Development only; never run a deployment like this."
            )
        log.info(
            "HTTP ingest ready: spool %s, stream %s, ack mode %s",
            settings.spool_path,
            settings.stream_key,
            settings.ack_mode,
        )
        try:
            yield
        finally:
            started = time.monotonic()
            await pipe.stop()
            telemetry.shutdown()
            log.info("HTTP ingest drained in %.2fs", time.monotonic() - started)

    handlers: list[Any] = [
        post(
            "/v1/ingest/{device_id:str}",
            request_max_body_size=settings.http_max_body_bytes,
        )(ingest),
        post(
            "/v1/ingest/{device_id:str}/batch",
            request_max_body_size=settings.http_max_batch_bytes,
        )(ingest_batch),
        get("/healthz")(healthz),
        get("/readyz")(readyz),
        get("/metrics")(metrics_endpoint),
        get("/docs", media_type=MediaType.HTML)(swagger_ui),
        get("/docs/openapi.json")(openapi_json),
    ]
    if settings.http_bench_endpoints:
        handlers.append(post("/bench/noop")(bench_noop))
        handlers.append(post("/bench/commit")(bench_commit))
    admin = admin_router()  # None (404) unless IOTGW_ADMIN_TOKEN(_FILE) is set
    if admin is not None:
        handlers.append(admin)
    return Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        openapi_config=None,
        state=State({"pipeline": pipe, "settings": settings, "guard": guard}),
        exception_handlers={HTTPException: _http_exception, Exception: _internal_error},
        request_max_body_size=settings.http_max_body_bytes,
        debug=False,
        logging_config=None,
        plugins=plugins,
    )
