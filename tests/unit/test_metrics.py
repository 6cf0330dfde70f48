"""Helpers of iotgw_core.metrics."""

from __future__ import annotations

import math

import pytest
from iotgw_core import metrics
from prometheus_client import CollectorRegistry, Histogram

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
