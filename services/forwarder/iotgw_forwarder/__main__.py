"""Run the forwarder: ``python -m iotgw_forwarder``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from iotgw_core.logs import setup_logging
from iotgw_core.settings import SettingsError, load_settings
from iotgw_core.sink import FileSink, Sink
from prometheus_client import start_http_server

from .consumer import Forwarder
from .settings import ForwarderSettings

log = logging.getLogger("iotgw_forwarder")


def build_sink(settings: ForwarderSettings) -> Sink:
    """The sink chosen by ``IOTGW_SINK``."""
    return FileSink(
        settings.outbox_dir,
        max_file_bytes=settings.outbox_max_file_bytes,
        max_record_bytes=settings.sink_max_record_bytes,
    )


async def serve(settings: ForwarderSettings) -> None:
    """Forward until SIGINT/SIGTERM, then finish the delivery in progress."""
    forwarder = Forwarder(settings, build_sink(settings))
    loop = asyncio.get_running_loop()
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
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
