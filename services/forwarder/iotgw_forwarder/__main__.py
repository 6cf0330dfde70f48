"""Run the forwarder: ``python -m iotgw_forwarder``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from iotgw_core import telemetry
from iotgw_core.logs import setup_logging
from iotgw_core.process import place_helpers, tune_process
from iotgw_core.settings import SettingsError, load_settings
from iotgw_core.sink import FileSink, Sink
from prometheus_client import start_http_server

from .consumer import Forwarder
from .settings import ForwarderSettings
from .sinks import (
    AwsClientConfig,
    IotDataSink,
    KinesisSink,
    MqttSink,
    MqttSinkConfig,
    TopicTemplate,
)

log = logging.getLogger("iotgw_forwarder")


def build_sink(settings: ForwarderSettings) -> Sink:
    """The sink chosen by ``IOTGW_SINK`` (docs/sinks.md); ValueError for a bad configuration."""
    topic = TopicTemplate(settings.sink_topic_template, settings.sink_basic_ingest_rule)
    aws = AwsClientConfig(
        region=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
        concurrency=settings.aws_concurrency,
    )
    if settings.sink in ("aws-iot-mqtt", "mqtt"):
        aws_iot = settings.sink == "aws-iot-mqtt"
        if aws_iot and not (settings.mqtt_sink_cert_file and settings.mqtt_sink_key_file):
            raise ValueError(
                "aws-iot-mqtt needs IOTGW_MQTT_SINK_CERT_FILE and IOTGW_MQTT_SINK_KEY_FILE"
            )
        return MqttSink(
            MqttSinkConfig(
                name=settings.sink,
                host=settings.mqtt_sink_host,
                port=settings.mqtt_sink_port,
                client_id=settings.mqtt_sink_client_id or settings.gateway_id,
                topic=topic,
                tls=aws_iot or settings.mqtt_sink_tls,
                ca_file=settings.mqtt_sink_ca_file,
                cert_file=settings.mqtt_sink_cert_file,
                key_file=settings.mqtt_sink_key_file,
                username=settings.mqtt_sink_username,
                password=settings.mqtt_sink_password,
                protocol=settings.mqtt_sink_protocol,
                connections=settings.mqtt_sink_connections,
                rate_per_connection=settings.mqtt_sink_rate,
                burst=settings.mqtt_sink_burst,
                max_inflight=settings.mqtt_sink_max_inflight,
                keepalive_s=settings.mqtt_sink_keepalive_s,
                ack_timeout_s=settings.mqtt_sink_ack_timeout_s,
                reconnect_base_s=settings.mqtt_sink_reconnect_base_s,
                reconnect_cap_s=settings.mqtt_sink_reconnect_cap_s,
                max_publish_bytes=settings.sink_max_publish_bytes,
                batch_max_records=settings.sink_batch_max_records,
            )
        )
    if settings.sink == "aws-iot-https":
        return IotDataSink(
            aws,
            topic=topic,
            rate=settings.aws_https_rate,
            max_publish_bytes=settings.sink_max_publish_bytes,
        )
    if settings.sink == "kinesis":
        return KinesisSink(aws, settings.kinesis_stream_name)
    return FileSink(
        settings.outbox_dir,
        max_file_bytes=settings.outbox_max_file_bytes,
        max_record_bytes=settings.sink_max_record_bytes,
    )


async def serve(settings: ForwarderSettings) -> None:
    """Forward until SIGINT/SIGTERM, then finish the delivery in progress."""
    try:
        sink = build_sink(settings)
    except ValueError as exc:
        log.error("sink %s: %s", settings.sink, exc)
        raise SystemExit(2) from None
    loop = asyncio.get_running_loop()
    place_helpers(loop)  # IOTGW_*_LOOP_CPUS
    forwarder = Forwarder(settings, sink)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, forwarder.stop)
    log.info(
        "forwarder %s: stream %s -> sink %s",
        settings.consumer_name,
        settings.stream_key,
        settings.sink,
    )
    await forwarder.run()


def main() -> int:
    """Load settings, expose /metrics, forward."""
    try:
        settings = load_settings(ForwarderSettings)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, "forwarder")
    telemetry.setup("forwarder")
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    # Every record read allocates a few container objects: with the default
    # thresholds the collector ran about every 200 records, and its full passes
    # walked every record held in memory (up to max_pending_records).
    tune_process(settings.forwarder_loop_cpus, settings.forwarder_worker_cpus)
    try:
        import uvloop  # as the ingests: cheaper socket I/O and callbacks than asyncio's loop

        uvloop.run(serve(settings))
    finally:
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
