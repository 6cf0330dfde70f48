"""Helpers of iotgw_core.metrics."""

from __future__ import annotations

import math

import pytest
from iotgw_core import metrics
from iotgw_core.counts import Baselines, BucketCounts, DeviceCounts
from iotgw_core.spool import NewRecord
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest

pytestmark = pytest.mark.unit


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_counts_like_observe_one_by_one() -> None:
    amounts = [0.0, 0.001, 0.0015, 0.0025, 0.003, 0.5, 0.75, 1, 59.5, 60, 61, 1e9, math.inf]
    one, many = CollectorRegistry(), CollectorRegistry()
    single = Histogram("h", "h", buckets=metrics.LATENCY_BUCKETS, registry=one)
    batched = Histogram("h", "h", buckets=metrics.LATENCY_BUCKETS, registry=many)
    for amount in amounts:
        single.observe(amount)
    metrics.observe_many(batched, amounts[:5])
    metrics.observe_many(batched, amounts[5:])
    metrics.observe_many(batched, [])
    assert _samples(many) == _samples(one)
    assert _samples(many)[("h_count", "")] == len(amounts)
    assert _samples(many)[("h_bucket", "0.0025")] == 4  # le is inclusive, as in observe


def test_bucket_counts_added_in_bulk_count_like_observe_one_by_one() -> None:
    # How the spool writer process reports commit latencies: per bucket, then summed.
    amounts = [0.0, 0.001, 0.0015, 0.0025, 0.003, 0.5, 0.75, 1, 59.5, 60, 61, 1e9]
    one, many = CollectorRegistry(), CollectorRegistry()
    single = Histogram("h", "h", buckets=metrics.LATENCY_BUCKETS, registry=one)
    bulk = Histogram("h", "h", buckets=metrics.LATENCY_BUCKETS, registry=many)
    counts = BucketCounts()
    for amount in amounts:
        single.observe(amount)
        counts.add(amount)
    metrics.add_bucket_counts(bulk, *counts.take())
    assert not counts and counts.take() == ({}, 0.0)  # taken: counting starts over
    a, b = _samples(one), _samples(many)
    assert b.pop(("h_sum", "")) == pytest.approx(a.pop(("h_sum", "")))  # summed in another order
    assert a == b and b[("h_count", "")] == len(amounts)


def test_observe_many_nan_goes_to_the_sum_only_as_in_observe() -> None:
    one, many = CollectorRegistry(), CollectorRegistry()
    single = Histogram("h", "h", buckets=(1.0,), registry=one)
    batched = Histogram("h", "h", buckets=(1.0,), registry=many)
    single.observe(math.nan)
    single.observe(0.5)
    metrics.observe_many(batched, [math.nan, 0.5])
    a, b = _samples(one), _samples(many)
    assert math.isnan(a.pop(("h_sum", ""))) and math.isnan(b.pop(("h_sum", "")))
    assert a == b and b[("h_count", "")] == 1


def test_observe_many_on_a_labelled_parent_fails_like_observe() -> None:
    parent = Histogram("h", "h", ["sink"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        parent.observe(1.0)
    with pytest.raises(ValueError):
        metrics.observe_many(parent, [1.0])


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_tally_reaches_its_counter_when_the_registry_is_collected() -> None:
    tally = metrics.Tally(metrics.EVENTS_RECEIVED.labels("tally-test"))
    before = _value("gateway_events_received_total", source="tally-test") or 0.0
    tally.count += 3
    tally.count += 2
    assert _value("gateway_events_received_total", source="tally-test") == before + 5
    assert 'gateway_events_received_total{source="tally-test"} 5.0' in generate_latest().decode()
    tally.count += 1
    assert _value("gateway_events_received_total", source="tally-test") == before + 6


def test_queued_observations_count_like_observe_and_are_bounded() -> None:
    one, many = CollectorRegistry(), CollectorRegistry()
    single = Histogram("h", "h", buckets=metrics.LATENCY_BUCKETS, registry=one)
    batched = Histogram("h", "h", buckets=metrics.LATENCY_BUCKETS, registry=many)
    queued = metrics.Observations(batched, limit=4)
    amounts = [0.0005, 0.002, 0.03, 7.0, 0.0009]
    for amount in amounts[:3]:
        single.observe(amount)
        queued.add(amount)
    assert _samples(many)[("h_count", "")] == 0  # still queued
    for amount in amounts[3:]:
        single.observe(amount)
        queued.add(amount)
    assert _samples(many)[("h_count", "")] == 4  # the limit observed the first four
    metrics.flush()
    assert _samples(many) == _samples(one)


def test_device_metrics_count_records_duplicates_gaps_and_overflow() -> None:
    devices = metrics.DeviceMetrics(max_devices=2)
    overflow = _value("gateway_device_label_overflow_total") or 0.0
    devices.observe("tn", "d1", 1, duplicate=False, now=100.0)
    devices.observe("tn", "d1", 4, duplicate=False, now=101.0)  # 2 and 3 skipped
    devices.observe("tn", "d1", 4, duplicate=True)
    devices.observe("tn", "d2", 9, duplicate=True)  # only ever repeats
    devices.observe("tn", "d3", 1, duplicate=False, now=102.0)  # over the limit
    devices.observe("tn", "d4", 1, duplicate=False, now=103.0)  # over the limit
    assert _value("gateway_device_records_total", tenant="tn", device_id="d1") == 2
    assert _value("gateway_device_last_seen_timestamp_seconds", tenant="tn", device_id="d1") == 101
    assert _value("gateway_device_seq_gaps_total", tenant="tn", device_id="d1") == 2
    assert _value("gateway_device_duplicates_total", tenant="tn", device_id="d1") == 1
    assert _value("gateway_device_duplicates_total", tenant="tn", device_id="d2") == 1
    assert _value("gateway_device_records_total", tenant="tn", device_id="d2") is None
    assert _value("gateway_device_records_total", tenant="tn", device_id="_other") == 2
    last_seen = "gateway_device_last_seen_timestamp_seconds"
    assert _value(last_seen, tenant="tn", device_id="_other") == 103
    assert _value("gateway_device_records_total", tenant="tn", device_id="d3") is None
    assert _value("gateway_device_label_overflow_total") == overflow + 2
    devices.observe("tn", "d1", 5, duplicate=False, now=104.0)
    assert _value("gateway_device_records_total", tenant="tn", device_id="d1") == 3
    assert _value("gateway_device_last_seen_timestamp_seconds", tenant="tn", device_id="d1") == 104


def test_device_counts_merged_give_the_series_observe_gives() -> None:
    # One side observes on the event loop, the other counts as the spool writer
    # process does and merges its reports: same readings, same series. Over the
    # limit, repeats, a gap, a late reading, a reconnects counter reset.
    readings = [
        ("d1", 1, False, 2.0),
        ("d1", 4, False, 5.0),  # 2 and 3 skipped, 3 reconnects
        ("d1", 4, True, None),
        ("d2", 9, True, None),  # only ever repeats
        ("d3", 1, False, None),  # over the limit of 2
        ("d1", 3, False, 1.0),  # late: no gap; the device restarted its counter: 1 reconnect
        ("d4", 1, True, None),  # over the limit
        ("d1", 7, False, 4.0),  # 5 and 6 skipped, 3 reconnects
    ]
    overflow = _value("gateway_device_label_overflow_total") or 0.0
    observed = metrics.DeviceMetrics(max_devices=2)
    for now, (device, seq, duplicate, reconnects) in enumerate(readings, start=100):
        observed.observe(
            "obs", device, seq, duplicate=duplicate, reconnects=reconnects, now=float(now)
        )
    assert _value("gateway_device_label_overflow_total") == overflow + 2
    merged = metrics.DeviceMetrics(max_devices=2)
    counts = DeviceCounts()
    for now, (device, seq, duplicate, reconnects) in enumerate(readings, start=100):
        record = NewRecord(f"id-{now}", "mrg", device, seq, b"{}")
        counts.observe(record, duplicate, reconnects, float(now))
        if now in (101, 104):  # three reports
            merged.merge(counts.take())
    merged.merge(counts.take())
    assert not counts
    assert _value("gateway_device_label_overflow_total") == overflow + 4

    def series(tenant: str) -> dict[tuple[str, str], float | None]:
        names = ("records", "duplicates", "seq_gaps", "reconnects")
        got = {
            (name, device): _value(f"gateway_device_{name}_total", tenant=tenant, device_id=device)
            for name in names
            for device in ("d1", "d2", "d3", "d4", "_other")
        }
        for device in ("d1", "d2", "_other"):
            last_seen = "gateway_device_last_seen_timestamp_seconds"
            got[("last_seen", device)] = _value(last_seen, tenant=tenant, device_id=device)
        return got

    assert series("mrg") == series("obs")
    assert series("obs")[("seq_gaps", "d1")] == 4
    assert series("obs")[("reconnects", "d1")] == 7
    assert series("obs")[("records", "_other")] == 1
    assert series("obs")[("last_seen", "d1")] == 107


def test_baselines_forget_the_oldest_device_past_their_limit() -> None:
    baselines = Baselines(limit=2)
    assert [baselines.gap(("t", d), 1) for d in ("a", "b")] == [0, 0]
    assert baselines.gap(("t", "a"), 3) == 1  # remembered
    assert baselines.gap(("t", "c"), 1) == 0  # a third device: "a" is forgotten
    assert baselines.gap(("t", "a"), 5) == 0  # counted from here, as after a restart
    assert baselines.gap(("t", "c"), 4) == 2
