"""Run the MQTT ingest service: ``python -m iotgw_ingest_mqtt``.

SIGTERM/SIGINT: stop taking messages, let in-flight batches commit and be
acknowledged, disconnect (the session stays on the broker), drain the spool
hand-off, exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from iotgw_core import telemetry
from iotgw_core.ingest import IngestPipeline
from iotgw_core.logs import setup_logging
from iotgw_core.process import place_helpers, tune_process
from iotgw_core.quarantine import Quarantine
from iotgw_core.registry import RegistryWatcher
from iotgw_core.settings import SettingsError, load_settings
from prometheus_client import start_http_server

from .bridge import SOURCE, Bridge
from .settings import IngestMqttSettings

log = logging.getLogger("iotgw_ingest_mqtt")


def build_bridge(settings: IngestMqttSettings, pipeline: IngestPipeline) -> Bridge:
    """The bridge for these settings."""
    return Bridge(
        pipeline=pipeline,
        registry=RegistryWatcher(settings.registry_path),
        quarantine=Quarantine(settings.quarantine_path),
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        username=settings.mqtt_username,
        password=settings.mqtt_password,
        client_id=settings.client_id,
        share_group=settings.mqtt_share_group,
        topic=settings.mqtt_topic,
        session_expiry_s=settings.mqtt_session_expiry_s,
        receive_maximum=settings.mqtt_receive_maximum,
        max_payload=settings.mqtt_max_payload_bytes,
        max_batch=settings.mqtt_max_batch,
        max_concurrent_batches=settings.mqtt_max_concurrent_batches,
        reconnect_min_s=settings.mqtt_reconnect_min_s,
        reconnect_max_s=settings.mqtt_reconnect_max_s,
        keepalive_s=settings.mqtt_keepalive_s,
    )


async def serve(settings: IngestMqttSettings) -> None:
    """Run until SIGTERM/SIGINT, then drain."""
    place_helpers(asyncio.get_running_loop())  # IOTGW_*_LOOP_CPUS
    pipeline = IngestPipeline(settings, source=SOURCE, commit_max_batch=settings.commit_max_batch)
    await pipeline.start()
    bridge = build_bridge(settings, pipeline)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "MQTT ingest: broker %s:%d, spool %s, stream %s, registry %s",
        settings.mqtt_host,
        settings.mqtt_port,
        settings.spool_path,
        settings.stream_key,
        settings.registry_path,
    )
    try:
        await bridge.run(stop)
    finally:
        await pipeline.stop()
        bridge.quarantine.close()
        log.info("MQTT ingest stopped")


def main() -> int:
    """Load settings, serve metrics, run the bridge."""
    try:
        settings = load_settings(IngestMqttSettings)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, "ingest-mqtt")
    telemetry.setup("ingest-mqtt")  # traces only when IOTGW_OTLP_ENDPOINT is set
    if settings.mqtt_metrics_port:
        start_http_server(settings.mqtt_metrics_port, addr=settings.mqtt_metrics_host)
    tune_process(settings.mqtt_loop_cpus, settings.mqtt_worker_cpus)
    try:
        import uvloop

        uvloop.run(serve(settings))
    finally:
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
