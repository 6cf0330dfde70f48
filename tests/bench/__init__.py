"""Benchmarks (`make bench`): each ``bench_<group>`` module measures and returns figures."""

from __future__ import annotations

from pathlib import Path


def service_env(work: Path, redis_url: str, **settings: str) -> dict[str, str]:
    """IOTGW_* settings of a gateway service whose spool and outbox live under ``work``
    (no metrics port, warnings only), with ``settings`` (IOTGW_* names) added."""
    return {
        "IOTGW_REDIS_URL": redis_url,
        "IOTGW_SPOOL_PATH": str(work / "spool.db"),
        "IOTGW_OUTBOX_DIR": str(work / "outbox"),
        "IOTGW_METRICS_PORT": "0",
        "IOTGW_LOG_LEVEL": "WARNING",
        **settings,
    }
