"""Settings of the forwarder (environment variables ``IOTGW_*``)."""

from __future__ import annotations

import socket
from typing import Annotated, Literal

import msgspec
from iotgw_core.settings import CommonSettings, LoopCpus, WorkerCpus
from msgspec import Meta


def _consumer_name() -> str:
    return f"{socket.gethostname()}-forwarder"


class ForwarderSettings(CommonSettings, kw_only=True, frozen=True):
    """Forwarder: sink, batching, retries, reconciliation."""

    sink: Annotated[
        Literal["file", "aws-iot-mqtt", "aws-iot-https", "kinesis", "mqtt"],
        Meta(description="Which sink records go to (docs/sinks.md)."),
    ] = "file"
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
    forward_linger_s: Annotated[
        float,
        Meta(
            ge=0,
            le=1,
            description="After a sink call made when the stream held less than a batch,"
            " wait this long before reading again, so that the next call carries more"
            " (fewer, larger spool transactions, fewer Redis reads).",
        ),
    ] = 0.05
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

    # -- cloud and broker sinks (docs/sinks.md) --
    sink_topic_template: Annotated[
        str,
        Meta(
            description="MQTT/IoT Data sinks: topic of a record; fields tenant, site,"
            " device_id, class."
        ),
    ] = "dt/{tenant}/{site}/{device_id}/{class}"
    sink_basic_ingest_rule: Annotated[
        str,
        Meta(
            description="AWS IoT: publish to Basic Ingest `$aws/rules/<rule>/<topic>` (empty: off)."
        ),
    ] = ""
    sink_max_publish_bytes: Annotated[
        int,
        Meta(ge=256, description="Largest publish (payload + topic); AWS IoT Core allows 128 KB."),
    ] = 128 * 1024
    sink_batch_max_records: Annotated[
        int,
        Meta(
            ge=1,
            description="MQTT sinks: records of one device in one publish (JSON array);"
            " 1: no batching.",
        ),
    ] = 1
    mqtt_sink_host: Annotated[
        str, Meta(description="MQTT sinks: broker host (AWS: the account's ATS endpoint).")
    ] = "127.0.0.1"
    mqtt_sink_port: Annotated[int, Meta(ge=1, le=65535, description="MQTT sinks: broker port.")] = (
        8883
    )
    mqtt_sink_tls: Annotated[
        bool, Meta(description="MQTT sinks: TLS 1.2+ (always on for aws-iot-mqtt).")
    ] = True
    mqtt_sink_ca_file: Annotated[
        str, Meta(description="MQTT sinks: CA bundle (AWS: AmazonRootCA1.pem); empty: system CAs.")
    ] = ""
    mqtt_sink_cert_file: Annotated[
        str, Meta(description="MQTT sinks: the thing's client certificate (PEM file or secret).")
    ] = ""
    mqtt_sink_key_file: Annotated[
        str, Meta(description="MQTT sinks: the thing's private key (PEM file or secret).")
    ] = ""
    mqtt_sink_username: Annotated[str, Meta(description="mqtt sink: user name (empty: none).")] = ""
    mqtt_sink_password: Annotated[
        str, Meta(description="mqtt sink: password; use IOTGW_MQTT_SINK_PASSWORD_FILE.")
    ] = ""
    mqtt_sink_protocol: Annotated[
        Literal["5", "3.1.1"], Meta(description="MQTT sinks: protocol version.")
    ] = "5"
    mqtt_sink_client_id: Annotated[
        str,
        Meta(
            description="MQTT sinks: client id (AWS: the thing name); pool members add -N."
            " Empty: the gateway id."
        ),
    ] = ""
    mqtt_sink_connections: Annotated[
        int, Meta(ge=1, le=64, description="MQTT sinks: connections in the pool (distinct ids).")
    ] = 1
    mqtt_sink_rate: Annotated[
        float,
        Meta(ge=0, description="MQTT sinks: publishes per second per connection (0: unpaced)."),
    ] = 80.0
    mqtt_sink_burst: Annotated[
        int,
        Meta(
            ge=1,
            description="MQTT sinks: publishes at once per connection; rate + burst <= 100"
            " keeps every second under AWS IoT's 100.",
        ),
    ] = 10
    mqtt_sink_max_inflight: Annotated[
        int,
        Meta(
            ge=1,
            le=65535,
            description="MQTT sinks: unacknowledged QoS 1 publishes per connection (AWS: 100).",
        ),
    ] = 100
    mqtt_sink_keepalive_s: Annotated[
        int, Meta(ge=5, le=1200, description="MQTT sinks: keep-alive interval.")
    ] = 30
    mqtt_sink_ack_timeout_s: Annotated[
        float, Meta(gt=0, description="MQTT sinks: wait this long for a PUBACK (then retry).")
    ] = 10.0
    mqtt_sink_reconnect_base_s: Annotated[
        float, Meta(gt=0, description="MQTT sinks: first reconnect backoff (full jitter).")
    ] = 0.5
    mqtt_sink_reconnect_cap_s: Annotated[
        float, Meta(gt=0, description="MQTT sinks: longest reconnect backoff.")
    ] = 30.0
    aws_region: Annotated[str, Meta(description="AWS sinks: region.")] = "us-east-1"
    aws_endpoint_url: Annotated[
        str,
        Meta(
            description="aws-iot-https/kinesis: endpoint URL (AWS IoT Data: the account's"
            " https://<id>-ats.iot.<region>.amazonaws.com)."
        ),
    ] = ""
    aws_https_rate: Annotated[
        float, Meta(ge=0, description="aws-iot-https: publishes per second (0: unpaced).")
    ] = 100.0
    aws_concurrency: Annotated[
        int, Meta(ge=1, le=64, description="aws-iot-https: requests in flight at once.")
    ] = 8
    kinesis_stream_name: Annotated[str, Meta(description="kinesis sink: stream name.")] = ""
    # -- draining a backlog --
    backlog_age_s: Annotated[
        float,
        Meta(ge=0, description="Records older than this count as backlog (paced) not live data."),
    ] = 30.0
    backlog_max_rate: Annotated[
        float,
        Meta(ge=0, description="Most backlog records per second handed to the sink (0: no cap)."),
    ] = 0.0
    backlog_live_first: Annotated[
        bool,
        Meta(description="Serve devices whose next record is live before backlog devices."),
    ] = False
    pause_poll_s: Annotated[
        float, Meta(gt=0, description="How often the admin pause flag (Redis) is read.")
    ] = 1.0
    forwarder_loop_cpus: LoopCpus = ""
    forwarder_worker_cpus: WorkerCpus = ""
