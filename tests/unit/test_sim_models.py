"""The simulator's models: battery, Wi-Fi, backoff bounds, seq persistence, ring, profiles."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from iotgw_core.validation import parse_reading
from iotgw_sim.device import BrokerTarget, Credentials, SimDevice
from iotgw_sim.evidence import DeviceEvidence, compare
from iotgw_sim.models import (
    CURRENT_IDLE_MA,
    CURRENT_TX_MA,
    Backoff,
    Battery,
    BatteryConfig,
    SensorConfig,
    Sensors,
    Wifi,
    WifiConfig,
)
from iotgw_sim.profile import DEFAULT_PROFILES, load_profile
from iotgw_sim.storage import Reading, Ring, SeqStore

pytestmark = [pytest.mark.unit]


def test_backoff_delays_stay_under_the_exponential_ceiling() -> None:
    backoff = Backoff(random.Random(1), base_s=0.25, cap_s=8.0)
    ceilings = [backoff.ceiling(n) for n in range(8)]
    assert ceilings == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for ceiling in ceilings:
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
    backoff.reset()
    assert backoff.attempt == 0 and backoff.next_delay() <= 0.25


def test_backoff_is_full_jitter_over_the_whole_range() -> None:
    rng = random.Random(2)
    delays = []
    for _ in range(2000):
        backoff = Backoff(rng, base_s=0.25, cap_s=8.0, attempt=10)
        delays.append(backoff.next_delay())
    assert max(delays) <= 8.0
    assert min(delays) < 0.5 and max(delays) > 7.5  # spread over [0, cap], not clustered
    assert 3.5 < sum(delays) / len(delays) < 4.5  # uniform: mean near cap / 2


def test_seq_store_resumes_above_every_seq_handed_out(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "seq.json"
    store = SeqStore(path, lease=16)
    first = [store.take() for _ in range(20)]
    assert first == list(range(20))
    assert store.writes == 2  # one write per lease, not per seq
    rebooted = SeqStore(path, lease=16)
    resumed = rebooted.take()
    assert resumed > max(first)
    assert resumed - max(first) <= 16  # the gap is less than a lease
    assert rebooted.take() == resumed + 1


def test_seq_store_with_lease_one_is_consecutive_across_reboots(tmp_path: Path) -> None:
    path = tmp_path / "seq.json"
    seen = []
    for _ in range(5):
        store = SeqStore(path, lease=1)
        seen += [store.take() for _ in range(3)]
    assert seen == list(range(15))


def test_seq_store_ignores_a_leftover_temp_file_and_refuses_a_broken_one(tmp_path: Path) -> None:
    path = tmp_path / "seq.json"
    store = SeqStore(path, lease=4)
    for _ in range(5):
        store.take()
    path.with_suffix(".tmp").write_text('{"ceil')  # a write cut short before the rename
    assert SeqStore(path, lease=4).take() == 8
    path.write_text("not json")
    with pytest.raises(ValueError, match="unreadable seq store"):
        SeqStore(path)


def test_ring_drops_oldest_and_counts() -> None:
    ring = Ring(3)
    for seq in range(5):
        evicted = ring.push(Reading(seq, "telemetry", b"{}", 0.0))
        assert (evicted.seq if evicted else None) == (seq - 3 if seq >= 3 else None)
    assert len(ring) == 3 and ring.dropped == 2
    head = ring.head()
    assert head is not None and head.seq == 2
    ring.pop_head(99)  # not the head: nothing happens
    assert len(ring) == 3
    ring.pop_head(2)
    assert [r.seq for r in ring.clear()] == [3, 4]
    assert len(ring) == 0


def test_battery_sags_under_load_more_when_empty() -> None:
    cfg = BatteryConfig(soc=0.9, r_int_ohm=0.3, noise_v=0.0)
    battery = Battery(cfg, random.Random(0))
    idle, tx = battery.voltage(CURRENT_IDLE_MA), battery.voltage(CURRENT_TX_MA)
    assert 3.9 < idle < 4.2 and tx < idle
    sag_full = idle - tx
    battery.soc = 0.1
    sag_low = battery.voltage(CURRENT_IDLE_MA) - battery.voltage(CURRENT_TX_MA)
    assert sag_low > sag_full  # internal resistance grows as the cell empties
    assert not battery.browns_out(CURRENT_IDLE_MA)
    assert battery.browns_out(CURRENT_TX_MA * 3)


def test_battery_drains_by_the_time_scale_and_is_depleted_at_cutoff() -> None:
    battery = Battery(BatteryConfig(capacity_mah=100, soc=1.0, time_scale=60), random.Random(0))
    battery.step(60.0, 100.0)  # 100 mA for an hour of battery time = the whole capacity
    assert battery.soc == pytest.approx(0.0)
    assert battery.depleted()
    bank = Battery(BatteryConfig(kind="bank", soc=0.5), random.Random(0))
    assert bank.voltage(CURRENT_TX_MA * 10) == 5.0 and not bank.browns_out(CURRENT_TX_MA * 10)


def test_wifi_drop_window_and_weak_signal() -> None:
    wifi = Wifi(WifiConfig(rssi_mean_dbm=-60, rssi_sigma_dbm=2), random.Random(3))
    wifi.force_drop(10.0, 20.0)
    assert wifi.up(9.9) and not wifi.up(10.0) and not wifi.up(29.9) and wifi.up(30.0)
    rssi = []
    for i in range(3000):
        wifi.step(i * 0.1, 0.1)
        rssi.append(wifi.rssi)
    assert min(rssi) > -75 and max(rssi) < -45  # mean-reverting, not a drifting walk
    assert abs(sum(rssi) / len(rssi) + 60) < 2
    weak = Wifi(WifiConfig(rssi_mean_dbm=-95, rssi_sigma_dbm=0.1), random.Random(4))
    weak.step(0.0, 0.1)
    assert not weak.up(0.0)


def test_wifi_random_drops_happen_at_about_their_rate() -> None:
    wifi = Wifi(WifiConfig(drops_per_hour=360, drop_s=(1.0, 1.0)), random.Random(5))
    starts, was_up = 0, True
    for i in range(36000):  # one simulated hour in 0.1 s steps
        now = i * 0.1
        wifi.step(now, 0.1)
        up = wifi.up(now)
        starts += was_up and not up
        was_up = up
    assert 250 < starts < 420


def _device(tmp_path: Path) -> SimDevice:
    spec = load_profile("demo").devices[2]
    creds = Credentials(spec.id, "sim", "lab", spec.id, "pw")
    return SimDevice(
        spec,
        creds,
        BrokerTarget("127.0.0.1", 1, "ca.crt"),
        tmp_path,
        seed=1,
        t0=0.0,
        stop=threading.Event(),
        drain=threading.Event(),
    )


def test_device_bodies_pass_the_gateways_validation(tmp_path: Path) -> None:
    device = _device(tmp_path)
    device.seqs = SeqStore(tmp_path / "seq.json")
    for i in range(device.spec.health_every * 2):
        device._sample(float(i))
    classes = []
    while (head := device.ring.head()) is not None:
        reading = parse_reading(head.body)
        assert reading.seq == head.seq
        assert {"temp_c", "battery_v"} <= set(reading.metrics) or head.cls == "health"
        classes.append(head.cls)
        device.ring.pop_head(head.seq)
    assert classes.count("health") == 2 and classes.count("telemetry") == 20


def test_sensor_readings_stay_physical() -> None:
    sensors = Sensors(SensorConfig(), random.Random(6))
    for i in range(1000):
        r = sensors.read(float(i))
        assert 15 < r["temp_c"] < 27 and 0 <= r["humidity_pct"] <= 100
        assert 1000 < r["pressure_hpa"] < 1026


def test_profiles_file_has_the_three_device_demo(tmp_path: Path) -> None:
    demo = load_profile("demo", DEFAULT_PROFILES)
    assert [d.id for d in demo.devices] == ["sim-01", "sim-02", "sim-03"]
    assert demo.devices[0].battery.kind == "bank" and demo.devices[0].period_s == 1.0
    bad = tmp_path / "p.toml"
    bad.write_text('[profiles.x]\n[[profiles.x.devices]]\nid = "a"\nwat = 1\n')
    with pytest.raises(ValueError, match="wat"):
        load_profile("x", bad)
    with pytest.raises(ValueError, match="no profile"):
        load_profile("nope", bad)


def test_evidence_flags_loss_duplicates_and_altered_metrics() -> None:
    ev = DeviceEvidence("d1")
    for seq in range(4):
        ev.queued[seq] = {"metrics": {"n": seq}}
        ev.classes[seq] = "telemetry"
        ev.published[seq] += 1
    ev.acked = {0, 1, 2}
    ev.buffered_at_stop = {3}
    ev.stopped = True
    good = [
        {"device_id": "d1", "seq": s, "class": "telemetry", "metrics": {"n": s}} for s in (0, 1, 2)
    ]
    assert compare(ev, good).ok
    bad = [*good[:1], good[0], {**good[2], "metrics": {"n": 9}}, {**good[0], "seq": 7}]
    report = compare(ev, bad)
    assert not report.ok
    assert report.acked_missing == [1]
    assert report.duplicates == [0]
    assert report.mismatched == [2]
    assert report.unexpected == [7]
