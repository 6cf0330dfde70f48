"""OpenTelemetry tracing of the gateway: one trace per record, from ingest to sink ack.

A record's trace (docs/observability.md):

    [device span]                      (the device's traceparent, when it sent one)
      └─ POST /v1/ingest/{device_id}   (HTTP server span, ingest-http only)
          └─ ingest <class>            (one per record; MQTT: "receive <topic>")
              ├─ spool commit          (the group-commit transaction it was in)
              ├─ stream publish        (XADD to the Redis Stream, after the commit)
              └─ stream process        (forwarder; parent read from the stream entry)
                  └─ sink publish      (one per delivery attempt, with its number)

The ingest span's context replaces the device's traceparent in the spool, the
envelope and the stream entry, so the forwarder (another process, after the
Redis hop, possibly after a restart and a reconcile) continues the same trace.

Everything here is a no-op until :func:`setup` found an OTLP endpoint
(``IOTGW_OTLP_ENDPOINT``): without one no provider is installed, no span is
recorded and the stored traceparent is the device's, unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Protocol

import msgspec
from msgspec import Meta
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from . import metrics
from .settings import load_settings

log = logging.getLogger(__name__)

TRACER_NAME = "iotgw"
_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer(TRACER_NAME)
_enabled = False
_provider: Any = None


class TelemetrySettings(msgspec.Struct, kw_only=True, frozen=True):
    """Traces and metrics of every service (environment variables ``IOTGW_*``)."""

    otlp_endpoint: Annotated[
        str,
        Meta(
            description="OTLP/HTTP endpoint of the collector, e.g. `http://otel-collector:4318`"
            " (traces go to `<endpoint>/v1/traces`); empty: tracing off."
        ),
    ] = ""
    trace_sample_ratio: Annotated[
        float,
        Meta(
            ge=0,
            le=1,
            description="Fraction of new traces kept; a device's traceparent decides for its"
            " own record (parent-based).",
        ),
    ] = 1.0
    otlp_timeout_s: Annotated[
        float, Meta(gt=0, description="Timeout of one OTLP export request.")
    ] = 10.0
    metrics_max_devices: Annotated[
        int,
        Meta(
            ge=0,
            description="Devices that get their own `device_id` label; later ones are counted"
            ' as `device_id="_other"`.',
        ),
    ] = 1000


def enabled() -> bool:
    """True once :func:`setup` installed an exporting tracer provider."""
    return _enabled


def setup(service_name: str, settings: TelemetrySettings | None = None) -> bool:
    """Configure tracing for this process (idempotent); returns whether it is on."""
    global _enabled, _provider
    settings = settings or load_settings(TelemetrySettings)
    metrics.DEVICES.max_devices = settings.metrics_max_devices
    if _enabled or not settings.otlp_endpoint:
        return _enabled
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from .envelope import GATEWAY_VERSION

    resource = Resource.create(
        {
            "service.name": service_name,
            "service.namespace": "iotgw",
            "service.version": GATEWAY_VERSION,
            "service.instance.id": f"{os.uname().nodename}-{os.getpid()}",
        }
    )
    sampler = ParentBased(root=_NoRedisRoots(TraceIdRatioBased(settings.trace_sample_ratio)))
    provider = TracerProvider(resource=resource, sampler=sampler)
    exporter = OTLPSpanExporter(
        endpoint=settings.otlp_endpoint.rstrip("/") + "/v1/traces",
        timeout=settings.otlp_timeout_s,
    )
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
    trace.set_tracer_provider(provider)
    _provider = provider
    try:
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor().instrument(tracer_provider=provider)
    except Exception as exc:  # an instrumentation must never stop a service
        log.warning("redis instrumentation unavailable: %s", exc)
    _enabled = True
    log.info(
        "tracing on: %s -> %s (sample ratio %s)",
        service_name,
        settings.otlp_endpoint,
        settings.trace_sample_ratio,
    )
    return True


def shutdown() -> None:
    """Flush and stop the exporter (spans of the last records are not lost on exit)."""
    if _provider is not None:
        with contextlib.suppress(Exception):
            _provider.shutdown()


class _NoRedisRoots(Sampler):
    """Root sampler that drops spans of Redis commands without a parent.

    The forwarder polls Redis all the time (XREADGROUP, XAUTOCLAIM, status);
    as roots those commands would be thousands of one-span traces. Redis
    commands issued inside a record's span are kept (parent-based).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> Any:
        if attributes and attributes.get("db.system") == "redis":
            return SamplingResult(Decision.DROP)
        return self.inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"NoRedisRoots{{{self.inner.get_description()}}}"


# -- traceparent helpers ----------------------------------------------------------------


def traceparent_of(span: Span) -> str | None:
    """The W3C traceparent naming ``span`` (None for an invalid context)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> otel_context.Context | None:
    """A context whose parent span is the one ``traceparent`` names (None: no parent)."""
    if not traceparent:
        return None
    ctx = _propagator.extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def _sampled(traceparent: str | None) -> bool:
    # The sampled bit of the trace flags (newer SDKs also set the random bit, 0x02).
    if not traceparent or len(traceparent) < 55:
        return False
    try:
        return bool(int(traceparent[53:55], 16) & 0x01)
    except ValueError:
        return False


def exemplar_of(traceparent: str | None) -> dict[str, str] | None:
    """A Prometheus exemplar (trace_id) for a latency observation of a traced record."""
    if not _enabled or not _sampled(traceparent):
        return None
    return {"trace_id": traceparent.split("-")[1]}  # type: ignore[union-attr]


def current_exemplar() -> dict[str, str] | None:
    """A Prometheus exemplar for the span that is current (None when none is sampled)."""
    if not _enabled:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return {"trace_id": format(ctx.trace_id, "032x")}


# -- the spans of a record ----------------------------------------------------------------


class _HasTrace(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def traceparent(self) -> str | None: ...


class _Stored(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def traceparent(self) -> str | None: ...
    @property
    def tenant(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def seq(self) -> int | None: ...
    @property
    def attempts(self) -> int: ...


def _record_attributes(
    record_id: str, tenant: str, device_id: str, seq: int | None, site: str | None = None
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "iotgw.record.id": record_id,
        "iotgw.tenant": tenant,
        "iotgw.device_id": device_id,
        "messaging.message.id": record_id,
    }
    if site is not None:
        attrs["iotgw.site"] = site
    if seq is not None:
        attrs["iotgw.seq"] = seq
    return attrs


class RecordTracer:
    """Starts and ends the spans of records as they pass one service."""

    def __init__(self, source: str, stream_key: str) -> None:
        self.source = source
        self.stream_key = stream_key
        self._ingest: dict[str, Span] = {}

    def start_ingest(
        self,
        *,
        record_id: str,
        tenant: str,
        site: str,
        device_id: str,
        record_class: str,
        seq: int | None,
        traceparent: str | None,
    ) -> str | None:
        """Open the record's ingest span; returns the traceparent to store with it.

        Its parent is the span that is current (the HTTP server span, whose
        own parent is the request's traceparent header) or else the device's
        ``traceparent`` (MQTT v5 user property).
        """
        if not _enabled:
            return traceparent
        current = trace.get_current_span()
        parent = None if current.get_span_context().is_valid else context_of(traceparent)
        attrs = _record_attributes(record_id, tenant, device_id, seq, site)
        attrs["iotgw.record.class"] = record_class
        attrs["iotgw.source"] = self.source
        if self.source == "mqtt":
            topic = f"v1/{tenant}/{site}/{device_id}/{record_class}"
            name, kind = f"receive {topic}", SpanKind.CONSUMER
            attrs.update(
                {
                    "messaging.system": "mqtt",
                    "messaging.operation.type": "receive",
                    "messaging.operation.name": "receive",
                    "messaging.destination.name": topic,
                }
            )
        else:
            name, kind = f"ingest {record_class}", SpanKind.INTERNAL
        span = _tracer.start_span(name, context=parent, kind=kind, attributes=attrs)
        if len(self._ingest) >= 10_000:
            # Built but never submitted (the caller refused them): end the oldest.
            self._ingest.pop(next(iter(self._ingest))).end()
        self._ingest[record_id] = span
        return traceparent_of(span) or traceparent

    @contextlib.contextmanager
    def commit(self, records: Sequence[_HasTrace]) -> Iterator[None]:
        """Spool commit span of each record around its group commit; ends the ingest spans."""
        spans = [(self._ingest.pop(r.id, None), r) for r in records] if _enabled else []
        commits = [
            _tracer.start_span(
                "spool commit",
                context=trace.set_span_in_context(span),
                attributes={"db.system": "sqlite", "db.operation.name": "INSERT"},
            )
            for span, _ in spans
            if span is not None
        ]
        try:
            yield
        except BaseException as exc:
            for span in commits + [s for s, _ in spans if s is not None]:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            for span in commits:
                span.end()
            for ingest, _ in spans:
                if ingest is not None:
                    ingest.end()

    @contextlib.contextmanager
    def handoff(self, entries: Sequence[Any]) -> Iterator[None]:
        """A "stream publish" span for each sampled entry around the XADD pipeline."""
        spans: list[Span] = []
        if _enabled:
            for entry in entries:
                if not _sampled(entry.traceparent):
                    continue
                attrs = _record_attributes(entry.id, entry.tenant, entry.device_id, None)
                attrs.update(
                    {
                        "messaging.system": "redis",
                        "messaging.operation.type": "publish",
                        "messaging.operation.name": "xadd",
                        "messaging.destination.name": self.stream_key,
                    }
                )
                spans.append(
                    _tracer.start_span(
                        f"publish {self.stream_key}",
                        context=context_of(entry.traceparent),
                        kind=SpanKind.PRODUCER,
                        attributes=attrs,
                    )
                )
        try:
            yield
        except BaseException as exc:
            for span in spans:
                span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            for span in spans:
                span.end()

    @contextlib.contextmanager
    def deliver(self, records: Sequence[_Stored], sink: str, group: str) -> Iterator[DeliverySpans]:
        """Forward span ("process <stream>") and sink publish span of each record."""
        spans = DeliverySpans()
        if _enabled:
            for rec in records:
                if not _sampled(rec.traceparent):
                    continue
                attrs = _record_attributes(rec.id, rec.tenant, rec.device_id, rec.seq)
                attrs.update(
                    {
                        "messaging.system": "redis",
                        "messaging.operation.type": "process",
                        "messaging.operation.name": "process",
                        "messaging.destination.name": self.stream_key,
                        "messaging.consumer.group.name": group,
                    }
                )
                forward = _tracer.start_span(
                    f"process {self.stream_key}",
                    context=context_of(rec.traceparent),
                    kind=SpanKind.CONSUMER,
                    attributes=attrs,
                )
                publish = _tracer.start_span(
                    f"publish {sink}",
                    context=trace.set_span_in_context(forward),
                    kind=SpanKind.PRODUCER,
                    attributes={
                        "messaging.system": sink,
                        "messaging.operation.type": "send",
                        "messaging.operation.name": "publish",
                        "messaging.message.id": rec.id,
                        "iotgw.sink": sink,
                        "iotgw.attempt": rec.attempts + 1,
                    },
                )
                spans.by_id[rec.id] = (forward, publish)
        try:
            yield spans
        except BaseException as exc:
            spans.failed(str(exc))
            raise
        finally:
            spans.end()


class DeliverySpans:
    """The open spans of one sink call; outcomes are set as the forwarder learns them."""

    def __init__(self) -> None:
        self.by_id: dict[str, tuple[Span, Span]] = {}
        self._published = False

    def failed(self, error: str) -> None:
        """The whole sink call failed (sink unavailable or raised)."""
        for forward, publish in self.by_id.values():
            publish.set_attribute("iotgw.outcome", "unavailable")
            publish.set_status(Status(StatusCode.ERROR, error))
            forward.set_status(Status(StatusCode.ERROR, error))
        self._end_publish()

    def outcomes(self, records: Sequence[_Stored], answers: Sequence[Any]) -> None:
        """Record each record's delivery outcome on its publish span and end it."""
        if not self.by_id:  # nothing traced (tracing off or none sampled)
            self._end_publish()
            return
        for rec, answer in zip(records, answers, strict=True):
            pair = self.by_id.get(rec.id)
            if pair is None:
                continue
            forward, publish = pair
            outcome = str(getattr(answer.outcome, "value", answer.outcome)).lower()
            publish.set_attribute("iotgw.outcome", outcome)
            forward.set_attribute("iotgw.outcome", outcome)
            if answer.error:
                publish.set_status(Status(StatusCode.ERROR, str(answer.error)))
        self._end_publish()

    def _end_publish(self) -> None:
        if not self._published:
            self._published = True
            for _, publish in self.by_id.values():
                publish.end()

    def end(self) -> None:
        """End every span (the forward spans after the spool marks)."""
        self._end_publish()
        for forward, _ in self.by_id.values():
            forward.end()
        self.by_id.clear()


# -- the /metrics exposition ----------------------------------------------------------------


def metrics_payload(accept: str | None) -> tuple[bytes, str]:
    """Exposition of this process's metrics, OpenMetrics (with exemplars) when asked for.

    Each service is one process (docs/observability.md, "One process per
    service"); should one ever run several workers, setting
    PROMETHEUS_MULTIPROC_DIR aggregates them (prometheus_client's
    multiprocess mode, which cannot carry exemplars).
    """
    registry: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics.flush()  # the default registry (which flushes when collected) is not read here
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type or CONTENT_TYPE_LATEST
