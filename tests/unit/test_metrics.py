"""Helpers of iotgw_core.metrics."""

from __future__ import annotations

import math

import pytest
from iotgw_core import metrics
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
