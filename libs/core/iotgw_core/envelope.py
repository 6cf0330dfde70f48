"""The envelope: what the gateway stores in its spool and forwards to a sink.

Field models are msgspec Structs; encoders and decoders are built once here.
New fields always get defaults so that older spooled records still decode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    from .validation import Reading

SCHEMA = "iotgw.envelope.v1"
GATEWAY_VERSION = "0.1.0"

RecordClass = Literal["telemetry", "health", "control-ack"]
Source = Literal["http", "mqtt"]
RECORD_CLASSES: tuple[str, ...] = ("telemetry", "health", "control-ack")


class GatewayInfo(msgspec.Struct, frozen=True):
    """Which gateway built the envelope."""

    id: str
    version: str = GATEWAY_VERSION


class TraceContext(msgspec.Struct, frozen=True, omit_defaults=True):
    """W3C trace context carried with the record from its device to its sink."""

    traceparent: str | None = None
    tracestate: str | None = None


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One record, as stored and forwarded (DESIGN.md, "Envelope").

    Optional fields are left out of the JSON when empty; ``schema`` and
    ``class`` are always written.
    """

    id: str
    schema: str = msgspec.field(default_factory=lambda: SCHEMA)
    tenant: str
    site: str
    device_id: str
    # `class` is a Python keyword: the attribute is `record_class`, the JSON key `class`.
    record_class: RecordClass = msgspec.field(name="class")
    seq: int | None = None
    ts: str
    received_at: str
    source: Source
    gateway: GatewayInfo
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    payload: dict[str, Any] | None = None
    trace: TraceContext | None = None


def envelope_of(
    reading: Reading,
    *,
    record_id: str,
    tenant: str,
    site: str,
    device_id: str,
    record_class: RecordClass,
    source: Source,
    gateway: GatewayInfo,
    received_at: str,
    traceparent: str | None,
) -> Envelope:
    """The envelope of a validated reading (its time is the arrival's if it has none)."""
    return Envelope(
        id=record_id,
        tenant=tenant,
        site=site,
        device_id=device_id,
        record_class=record_class,
        seq=reading.seq,
        ts=reading.ts or received_at,
        received_at=received_at,
        source=source,
        gateway=gateway,
        metrics=reading.metrics,
        tags=reading.tags,
        payload=reading.payload,
        trace=TraceContext(traceparent=traceparent) if traceparent else None,
    )


envelope_encoder = msgspec.json.Encoder()
envelope_decoder = msgspec.json.Decoder(Envelope)


def encode_envelope(env: Envelope) -> bytes:
    """Serialize an envelope to its canonical JSON bytes."""
    return envelope_encoder.encode(env)


def decode_envelope(data: bytes) -> Envelope:
    """Parse envelope JSON bytes (as stored in the spool)."""
    return envelope_decoder.decode(data)
