"""Prometheus metrics of the stream consumer (architecture §4.5)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.freshness_seconds = Histogram(
            "pinrec_feature_freshness_seconds",
            "Event time to the moment its user's sequence was written and readable",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def observe_freshness(self, seconds: np.ndarray) -> None:
        """Record many freshness samples at once: the same counts as observe() on each, bucketed with numpy
        (one observe() per event costs more than the rest of the consumer's bookkeeping)."""
        observe_many(self.freshness_seconds, seconds)
        if self.freshness_samples_s is not None:
            self.freshness_samples_s.extend(seconds.tolist())


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """Histogram.observe for every value, in one pass. prometheus_client keeps one non-cumulative counter per
    bucket (a value lands in the first bucket whose upper bound is >= it) plus a sum; so do we."""
    if values.size == 0:
        return
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum()))
