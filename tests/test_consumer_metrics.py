"""Bulk histogram observation must expose exactly what prometheus_client's Histogram exposes after one
observe() per value."""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from pinrec.stream.metrics import BulkHistogram

BUCKETS = (0.01, 0.1, 1.0, 10.0)


def _samples(registry: CollectorRegistry) -> list[tuple[str, dict, float]]:
    return [
        (s.name, s.labels, s.value)
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    ]


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("h_seconds", "test", buckets=BUCKETS, registry=registry)


def _bulk_histogram() -> tuple[CollectorRegistry, BulkHistogram]:
    registry = CollectorRegistry()
    return registry, BulkHistogram("h_seconds", "test", buckets=BUCKETS, registry=registry)


def test_observe_many_equals_one_observe_per_value():
    # Values on bucket bounds, between them, below the first and above the last.
    values = np.array([0.0, 0.01, 0.010001, 0.05, 0.1, 0.5, 1.0, 3.0, 10.0, 11.0, 1e6, 0.2, 0.2])
    bulk_registry, bulk = _bulk_histogram()
    one_registry, one = _histogram()
    bulk.observe_many(values)
    for value in values:
        one.observe(float(value))
    bulk_samples, one_samples = _samples(bulk_registry), _samples(one_registry)
    # Buckets and count exactly; the sum up to float rounding (numpy sums in another order).
    assert [s for s in bulk_samples if s[0] != "h_seconds_sum"] == [
        s for s in one_samples if s[0] != "h_seconds_sum"
    ]
    assert bulk_registry.get_sample_value("h_seconds_sum") == pytest.approx(
        one_registry.get_sample_value("h_seconds_sum")
    )


def test_observe_many_of_nothing_records_nothing():
    registry, histogram = _bulk_histogram()
    histogram.observe_many(np.array([]))
    assert registry.get_sample_value("h_seconds_count") == 0
