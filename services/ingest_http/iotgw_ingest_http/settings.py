"""Settings of the HTTP ingest service (environment variables ``IOTGW_*``)."""

from __future__ import annotations

from typing import Annotated, Literal

from iotgw_core.settings import CommonSettings, LoopCpus, WorkerCpus
from msgspec import Meta


class IngestHttpSettings(CommonSettings, kw_only=True, frozen=True):
    """HTTP ingest: listener, limits, acknowledgement mode."""

    http_host: Annotated[str, Meta(description="Address the HTTP ingest listens on.")] = "127.0.0.1"
    http_port: Annotated[int, Meta(ge=0, le=65535, description="HTTP ingest port.")] = 8000
    http_max_body_bytes: Annotated[
        int, Meta(ge=64, description="Largest body of POST /v1/ingest/{device_id} (else 413).")
    ] = 64 * 1024
    http_max_batch_bytes: Annotated[
        int, Meta(ge=64, description="Largest body of the batch endpoint (else 413).")
    ] = 1024 * 1024
    http_max_batch_items: Annotated[
        int, Meta(ge=1, description="Most readings in one batch request (else 400).")
    ] = 500
    ack_mode: Annotated[
        Literal["enqueue", "sink"],
        Meta(
            description="`enqueue`: answer 202 once durable; `sink`: answer 200 once the sink"
            " acknowledged (202 after the timeout)."
        ),
    ] = "enqueue"
    sink_ack_timeout_s: Annotated[
        float, Meta(gt=0, description="How long ack mode `sink` waits before answering 202.")
    ] = 5.0
    retry_after_s: Annotated[
        int, Meta(ge=1, description="Retry-After seconds sent with 503 (draining, spool full).")
    ] = 5
    commit_max_batch: Annotated[
        int, Meta(ge=1, description="Most records in one group-commit transaction.")
    ] = 1024
    drain_timeout_s: Annotated[
        float, Meta(ge=0, description="On SIGTERM, how long to finish in-flight requests.")
    ] = 10.0
    http_bench_endpoints: Annotated[
        bool,
        Meta(
            description="Expose POST /bench/noop and /bench/commit, the ceiling and the"
            " durability floor `make bench` compares ingest to. Never in production."
        ),
    ] = False
    auth_mode: Annotated[
        Literal["required", "none"],
        Meta(
            description="`required`: every ingest request carries the device's credential"
            " (HMAC signature or bearer JWT, docs/devices.md) and is rate limited; `none`:"
            " development only, no authentication (logged loudly and shown in /healthz)."
        ),
    ] = "required"
    registry_path: Annotated[
        str, Meta(description="Device registry file (re-read when it changes).")
    ] = "var/devices/registry.toml"
    auth_replay_window_s: Annotated[
        float,
        Meta(gt=0, description="Largest clock difference accepted in X-IoTGW-Timestamp (s)."),
    ] = 300.0
    http_loop_cpus: LoopCpus = ""
    http_worker_cpus: WorkerCpus = ""
