"""Logging set-up shared by the services: one line per event, to stderr."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str, service: str) -> None:
    """Log to stderr as ``time level service logger: message``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
