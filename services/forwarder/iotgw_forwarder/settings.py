"""Settings of the forwarder (environment variables ``IOTGW_*``)."""

from __future__ import annotations

import socket
from typing import Annotated, Literal

import msgspec
from iotgw_core.settings import CommonSettings
from msgspec import Meta


def _consumer_name() -> str:
    return f"{socket.gethostname()}-forwarder"


class ForwarderSettings(CommonSettings, kw_only=True, frozen=True):
    """Forwarder: sink, batching, retries, reconciliation."""

    sink: Annotated[Literal["file"], Meta(description="Which sink records go to.")] = "file"
    outbox_dir: Annotated[str, Meta(description="File sink: directory of the JSONL outbox.")] = (
        "var/outbox"
    )
    outbox_max_file_bytes: Annotated[
        int, Meta(ge=1024, description="File sink: rotate to a new file past this size.")
    ] = 64 << 20
    sink_max_record_bytes: Annotated[
        int, Meta(ge=1, description="Largest envelope the sink takes; larger ones go Dead.")
    ] = 128 * 1024
    forward_batch: Annotated[
        int, Meta(ge=1, description="Most records handed to the sink in one call.")
    ] = 500
    forward_batch_per_device: Annotated[
        int, Meta(ge=1, description="Most records of one device in one sink call (fairness).")
    ] = 200
    max_pending_records: Annotated[
        int, Meta(ge=1, description="Records held in memory before the forwarder stops reading.")
    ] = 20_000
    retry_base_s: Annotated[
        float, Meta(gt=0, description="Backoff after a record's first failed attempt.")
    ] = 0.5
    retry_cap_s: Annotated[float, Meta(gt=0, description="Longest backoff between attempts.")] = (
        60.0
    )
    retry_max_attempts: Annotated[
        int, Meta(ge=1, description="Failed attempts after which a record becomes Dead.")
    ] = 10
    unavailable_cap_s: Annotated[
        float,
        Meta(gt=0, description="Longest wait while the sink is unreachable (no attempt spent)."),
    ] = 30.0
    consumer_name: Annotated[
        str, Meta(description="Consumer name in the stream group; default: host name + -forwarder.")
    ] = msgspec.field(default_factory=_consumer_name)
    reclaim_idle_s: Annotated[
        float, Meta(gt=0, description="Pending entries idle this long are taken over (XAUTOCLAIM).")
    ] = 60.0
    reconcile_interval_s: Annotated[
        float, Meta(gt=0, description="How often the spool is compared with the stream.")
    ] = 15.0
    reconcile_grace_s: Annotated[
        float, Meta(ge=0, description="Records younger than this are left to the ingest hand-off.")
    ] = 5.0
    prune_interval_s: Annotated[
        float, Meta(gt=0, description="How often Acked records past retention are pruned.")
    ] = 60.0
    metrics_host: Annotated[str, Meta(description="Address of the forwarder's /metrics.")] = (
        "127.0.0.1"
    )
    metrics_port: Annotated[
        int, Meta(ge=0, le=65535, description="Port of the forwarder's /metrics (0: none).")
    ] = 9101
