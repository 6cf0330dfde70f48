"""The device registry file: parse, render, reload, keep the last good one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from iotgw_core.registry import (
    Device,
    Limits,
    Registry,
    RegistryError,
    RegistryWatcher,
    load_registry,
    parse_registry,
    render_registry,
    save_registry,
)

pytestmark = [pytest.mark.unit]


def sample() -> Registry:
    return (
        Registry(defaults=Limits(10.0, 20))
        .with_device(
            Device("stm32-01", "acme", "aal", "$7$101$a$b", 'sec"ret\\', limits=Limits(1.5, 3))
        )
        .with_device(Device("stm32-02", "acme", "cph", http_secret="x", limits=Limits(10.0, 20)))
    )


def test_render_and_parse_round_trip() -> None:
    registry = sample()
    assert parse_registry(render_registry(registry)) == registry


def test_save_is_private_and_a_missing_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "devices" / "registry.toml"
    assert load_registry(path) == Registry()
    save_registry(path, sample())
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_registry(path) == sample()


def test_hand_edited_entry_with_defaults(tmp_path: Path) -> None:
    text = '[defaults]\nburst = 7\n\n[devices.probe-9]\ntenant = "t1"\nsite = "s1"\n'
    dev = parse_registry(text).devices["probe-9"]
    assert (dev.tenant, dev.site, dev.limits.burst, dev.limits.rate_per_s) == ("t1", "s1", 7, 50.0)
    assert dev.publish_topics()[0] == "v1/t1/s1/probe-9/telemetry"
    assert dev.command_filter() == "v1/t1/s1/probe-9/cmd/#"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[devices.x]\nsite = 's'\n", "tenant is required"),
        ("[devices.x]\ntenant = 'a/b'\nsite = 's'\n", "tenant"),
        ("[devices.'bad id']\ntenant = 't'\nsite = 's'\n", "device id"),
        ("[devices.x]\ntenant = 't'\nsite = 's'\nburst = 0\n", "burst"),
        ("[devices.x]\ntenant = 't'\nsite = 's'\nrate_per_s = -1\n", "rate_per_s"),
        ("[devices.x]\ntenant = 't'\nsite = 's'\nhttp_secret = 5\n", "http_secret"),
        ("not toml = = =", "not valid TOML"),
    ],
)
def test_invalid_entries_are_named(text: str, names: str) -> None:
    with pytest.raises(RegistryError, match=names):
        parse_registry(text)


def test_watcher_reloads_on_change_and_keeps_the_last_good(tmp_path: Path) -> None:
    path = tmp_path / "registry.toml"
    save_registry(path, sample())
    watcher = RegistryWatcher(path, check_interval_s=0)
    assert set(watcher.current().devices) == {"stm32-01", "stm32-02"}
    save_registry(path, sample().without("stm32-02"))
    assert set(watcher.current().devices) == {"stm32-01"}
    path.write_text("[devices.broken\n")
    assert set(watcher.current().devices) == {"stm32-01"}  # last good stays in force
    assert watcher.error is not None and "not valid TOML" in watcher.error
    save_registry(path, sample())
    assert set(watcher.current().devices) == {"stm32-01", "stm32-02"}
    assert watcher.error is None
