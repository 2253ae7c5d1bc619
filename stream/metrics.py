"""Prometheus metrics of the stream consumer (architecture §4.5)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class ConsumerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # Benchmarks keep every freshness sample for exact quantiles; a long-running consumer does not.
    freshness_samples_s: list[float] | None = None

    def __post_init__(self) -> None:
        r = self.registry
        self.consumed = Counter(
            "pinrec_consumer_events_consumed_total", "Messages read from Kafka", registry=r
        )
        self.applied = Counter(
            "pinrec_consumer_events_applied_total", "Events newly merged into a user sequence", registry=r
        )
        self.skipped = Counter(
            "pinrec_consumer_events_skipped_total",
            "Valid events that changed no sequence",
            ["reason"],  # duplicate | unsequenced_action
            registry=r,
        )
        self.written = Counter(
            "pinrec_consumer_sequences_written_total",
            "User sequences written to the online store",
            registry=r,
        )
        self.write_conflicts = Counter(
            "pinrec_consumer_write_conflicts_total",
            "Sequence writes refused because another writer changed the row since it was read (re-merged)",
            registry=r,
        )
        self.dead_lettered = Counter(
            "pinrec_consumer_events_dead_lettered_total",
            "Messages sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.store_errors = Counter(
            "pinrec_consumer_store_errors_total", "Failed online-store operations (retried)", registry=r
        )
        self.lag = Gauge(
            "pinrec_consumer_lag_messages", "Messages behind the end of the assigned partitions", registry=r
        )
        self.assigned_partitions = Gauge(
            "pinrec_consumer_assigned_partitions", "Partitions this consumer owns in its group", registry=r
        )
        self.batch_seconds = Histogram(
            "pinrec_consumer_batch_seconds",
            "Time to process one polled batch, per stage",
            ["stage"],  # parse | read | merge | write | commit | total
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.freshness_seconds = BulkHistogram(
            "pinrec_feature_freshness_seconds",
            "Event time to the moment its user's sequence was written and readable",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def observe_freshness(self, seconds: np.ndarray) -> None:
        """Record the freshness of a batch's events at once."""
        self.freshness_seconds.observe_many(seconds)
        if self.freshness_samples_s is not None:
            self.freshness_samples_s.extend(seconds.tolist())

    def value(self, sample: str, **labels: str) -> float:
        """The current value of one of these series, e.g. value("pinrec_consumer_events_consumed_total")."""
        return sample_total(self.registry, sample, **labels)


def sample_total(registry: CollectorRegistry, sample: str, **labels: str) -> float:
    """The sum of a sample's series that carry the given labels (all of its series when none are given)."""
    return sum(
        found.value
        for metric in registry.collect()
        for found in metric.samples
        if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items())
    )


class BulkHistogram(Collector):
    """A histogram without labels that observes a whole array at once: the same series, buckets and counts
    as prometheus_client's Histogram with one observe() per value (one observe() per event costs more than
    the rest of the consumer's bookkeeping), exposed through the public collector interface."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self.upper_bounds = np.array([*buckets, float("inf")])  # as Histogram: +Inf is the last bucket
        self._counts = np.zeros(len(self.upper_bounds), dtype=np.int64)  # per bucket, not cumulative
        self._sum = 0.0
        self._created = time.time()
        self._lock = threading.Lock()  # the consumer observes while the /metrics thread collects
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Observe every value: each lands in the first bucket whose upper bound is >= it, as in observe()."""
        if values.size == 0:
            return
        bucket = np.searchsorted(self.upper_bounds, values, side="left")
        counts = np.bincount(bucket, minlength=len(self.upper_bounds))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)  # the registry checks names with it

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts).tolist(), self._sum
        family = HistogramMetricFamily(self.name, self.documentation)
        buckets = [(floatToGoString(b), float(c)) for b, c in zip(self.upper_bounds, cumulative, strict=True)]
        family.add_metric([], buckets, total)
        family.add_sample(f"{self.name}_created", {}, self._created)
        yield family
