"""The OpenAPI document of the HTTP ingest API, written out rather than inferred.

Handlers read the raw body themselves (size limit before reading, the
contract's own error codes), so the document is built here from the msgspec
models, with every status code each path can answer.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from iotgw_core.envelope import GATEWAY_VERSION
from iotgw_core.validation import MAX_METRICS, MAX_TAG_VALUE_LEN, MAX_TAGS
from msgspec import Meta

from .admin import SECURITY_SCHEMES
from .admin import openapi_paths as admin_paths

Key = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class Reading(msgspec.Struct, forbid_unknown_fields=True):
    """One reading from a device. Needs `metrics` or `payload`."""

    ts: (
        Annotated[
            str,
            Meta(description="RFC 3339 time of the reading with a zone; the gateway fills it."),
        ]
        | None
    ) = None
    seq: (
        Annotated[
            int,
            Meta(
                ge=0,
                le=2**63 - 1,
                description="Device sequence number; (tenant, device_id, seq) is idempotent.",
            ),
        ]
        | None
    ) = None
    metrics: Annotated[
        dict[Key, float],
        Meta(max_length=MAX_METRICS, description="Finite numbers (no NaN/Inf)."),
    ] = {}
    tags: Annotated[
        dict[Key, Annotated[str, Meta(max_length=MAX_TAG_VALUE_LEN)]],
        Meta(max_length=MAX_TAGS, description="Short strings."),
    ] = {}
    payload: Annotated[dict[str, Any] | None, Meta(description="Optional structured details.")] = (
        None
    )


class Error(msgspec.Struct):
    """Every error answer: a stable machine code and a message naming the rule."""

    code: Annotated[str, Meta(examples=["too_many_metrics"])]
    message: Annotated[str, Meta(examples=["metrics must have <= 32 keys"])]


class Accepted(msgspec.Struct):
    """A reading taken: durable (`enqueued`) or acknowledged by the sink (`delivered`)."""

    id: Annotated[str, Meta(description="Record id (UUIDv7); the original one for a duplicate.")]
    status: Annotated[str, Meta(description="`enqueued` (202) or `delivered` (200).")]
    duplicate: Annotated[
        bool, Meta(description="True when (tenant, device_id, seq) was already stored.")
    ]


class BatchItemResult(msgspec.Struct, omit_defaults=True):
    """The result of one reading of a batch."""

    index: int
    status: Annotated[str, Meta(description="`enqueued`, `delivered` or `rejected`.")]
    id: str | None = None
    duplicate: bool | None = None
    code: str | None = None
    message: str | None = None


class BatchResult(msgspec.Struct):
    """A result per reading of a batch, in order."""

    accepted: int
    duplicates: int
    rejected: int
    results: list[BatchItemResult]


def _json(ref: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }
    if headers:
        out["headers"] = headers
    return out


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
}
DEVICE_ID = {
    "name": "device_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
}
TRACEPARENT = {
    "name": "traceparent",
    "in": "header",
    "required": False,
    "description": "W3C trace context of the device; becomes the parent of the record's trace.",
    "schema": {"type": "string"},
}
AUTH_HEADERS = [
    {
        "name": "X-IoTGW-Timestamp",
        "in": "header",
        "required": False,
        "description": "HMAC credential: unix seconds; must be within the replay window"
        " (IOTGW_AUTH_REPLAY_WINDOW_S) of the server clock.",
        "schema": {"type": "string"},
    },
    {
        "name": "X-IoTGW-Signature",
        "in": "header",
        "required": False,
        "description": "HMAC credential: hex HMAC-SHA256 with the device's http_secret over"
        " `<X-IoTGW-Timestamp>.<body>` (docs/devices.md).",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
    {
        "name": "X-IoTGW-Device",
        "in": "header",
        "required": False,
        "description": "HMAC credential: whose secret signed (default: the device in the path).",
        "schema": {"type": "string"},
    },
]
DEVICE_SECURITY_SCHEMES = {
    "deviceJwt": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "HS256 JWT signed with the device's http_secret; `sub` = device id,"
        " `exp` required.",
    },
    "deviceHmac": {
        "type": "apiKey",
        "in": "header",
        "name": "X-IoTGW-Signature",
        "description": "HMAC-SHA256 of timestamp + body (with X-IoTGW-Timestamp).",
    },
}
DEVICE_SECURITY: list[dict[str, list[str]]] = [{"deviceJwt": []}, {"deviceHmac": []}]
EXAMPLE = {
    "seq": 1,
    "metrics": {"temp_c": 21.5},
    "tags": {"site": "AAL"},
    "payload": {"raw": "ok"},
}


def _common_errors(limit_name: str) -> dict[str, Any]:
    return {
        "400": _json("Error", "Validation failed: the code names the broken rule."),
        "401": _json("Error", "No credential, or one that does not verify (code unauthorized)."),
        "403": _json("Error", "A valid credential of another device (code forbidden)."),
        "429": _json(
            "Error", "The device is over its rate limit (code rate_limited).", RETRY_AFTER
        ),
        "413": _json("Error", f"Body over the configured limit ({limit_name})."),
        "415": _json("Error", "Body is not JSON (Content-Type must be application/json)."),
        "503": _json(
            "Error",
            "Not accepting: draining, or the spool is over its high-water mark.",
            RETRY_AFTER,
        ),
    }


def build_openapi() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    _, components = msgspec.json.schema_components(
        [Reading, Error, Accepted, BatchResult], ref_template="#/components/schemas/{name}"
    )
    health = {"type": "object", "additionalProperties": True}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "iot-gateway HTTP ingest",
            "version": GATEWAY_VERSION,
            "description": "Durable telemetry ingest: a 202 means the reading is committed to"
            " the gateway's spool and will be forwarded at least once.",
        },
        "paths": {
            "/v1/ingest/{device_id}": {
                "post": {
                    "operationId": "ingest",
                    "summary": "Ingest one reading of a device",
                    "parameters": [DEVICE_ID, TRACEPARENT, *AUTH_HEADERS],
                    "security": DEVICE_SECURITY,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Reading"},
                                "example": EXAMPLE,
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            "Accepted", "Delivered: the sink acknowledged (ack mode sink)."
                        ),
                        "202": _json("Accepted", "Enqueued: committed to the spool."),
                        **_common_errors("IOTGW_HTTP_MAX_BODY_BYTES"),
                    },
                }
            },
            "/v1/ingest/{device_id}/batch": {
                "post": {
                    "operationId": "ingestBatch",
                    "summary": "Ingest a list of readings of a device, with a result per item",
                    "parameters": [DEVICE_ID, TRACEPARENT, *AUTH_HEADERS],
                    "security": DEVICE_SECURITY,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Reading"},
                                },
                                "example": [EXAMPLE, {**EXAMPLE, "seq": 2}],
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            "BatchResult", "Every valid reading delivered (ack mode sink)."
                        ),
                        "202": _json("BatchResult", "Valid readings enqueued; see each result."),
                        **_common_errors("IOTGW_HTTP_MAX_BATCH_BYTES"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Component status: spool, stream, sink",
                    "responses": {
                        "200": {
                            "description": "Status of each component.",
                            "content": {"application/json": {"schema": health}},
                        },
                        "503": {
                            "description": "The spool cannot be used.",
                            "content": {"application/json": {"schema": health}},
                        },
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness for traffic",
                    "responses": {
                        "200": {"description": "Accepting readings."},
                        "503": _json("Error", "Draining or spool full.", RETRY_AFTER),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            **admin_paths(),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {**SECURITY_SCHEMES, **DEVICE_SECURITY_SCHEMES},
        },
    }
