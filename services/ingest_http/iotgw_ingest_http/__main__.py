"""Run the HTTP ingest service: ``python -m iotgw_ingest_http [--dump-openapi]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import uvicorn
from iotgw_core.logs import setup_logging
from iotgw_core.process import tune_process
from iotgw_core.settings import SettingsError, load_settings

from .app import create_app
from .openapi import build_openapi
from .settings import IngestHttpSettings

log = logging.getLogger("iotgw_ingest_http")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load settings, serve until SIGINT/SIGTERM, then drain."""
    parser = argparse.ArgumentParser(prog="iotgw_ingest_http", description=__doc__)
    parser.add_argument(
        "--dump-openapi", action="store_true", help="print the OpenAPI document and exit"
    )
    args = parser.parse_args(argv)
    if args.dump_openapi:
        json.dump(build_openapi(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    try:
        settings = load_settings(IngestHttpSettings)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, "ingest-http")
    app = create_app(settings)
    tune_process(settings.http_loop_cpus, settings.http_worker_cpus)
    pipeline = app.state.pipeline

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            # Refuse new readings (503) at once; uvicorn then finishes in-flight requests.
            pipeline.begin_drain()
            super().handle_exit(sig, frame)  # type: ignore[arg-type]
            # A drained shutdown is a clean exit (0), not death by the signal that asked for it.
            self._captured_signals.clear()

    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(settings.drain_timeout_s) or None,
        backlog=2048,
    )
    Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
