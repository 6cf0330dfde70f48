"""The forwarder's entry point."""

from __future__ import annotations

import gc

import pytest
from iotgw_forwarder import __main__ as entry

pytestmark = pytest.mark.unit


def test_main_tunes_the_garbage_collector_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int, int]] = []

    async def serve(settings: object) -> None:
        seen.append(gc.get_threshold())

    before = gc.get_threshold()
    monkeypatch.setenv("IOTGW_METRICS_PORT", "0")
    monkeypatch.setattr(entry, "serve", serve)
    monkeypatch.setattr(entry.telemetry, "setup", lambda name: False)
    monkeypatch.setattr(entry, "setup_logging", lambda level, service: None)
    try:
        assert entry.main() == 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
    assert seen and seen[0][0] >= 10_000, seen
