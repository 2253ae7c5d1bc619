"""Serving metrics (architecture §4.5), on the model server's own /metrics next to KServe's histograms.

KServe's /metrics exposes prometheus_client's default registry, so the server builds
`ServingMetrics(REGISTRY)`; anything else (tests, benchmarks) gets a registry of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from pinrec.serving.engine import Recommendation

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)
STAGES = ("features", "prefill", "decode", "search", "total")


@dataclass
class ServingMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.stage_seconds = Histogram(
            "pinrec_request_stage_seconds",
            "Time per request in each stage (features, prefill, decode, search, total)",
            ["surface", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "pinrec_requests_total",
            "Recommendation requests by result (ok, invalid, timeout, error)",
            ["surface", "status"],
            registry=r,
        )
        self.candidates = Histogram(
            "pinrec_candidates_returned",
            "Items returned per request",
            ["surface"],
            buckets=(0, 1, 5, 10, 25, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.unique_share = Histogram(
            "pinrec_response_unique_share",
            "Diversity: share of unique items among everything the queries retrieved, before dedup",
            ["surface"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
            registry=r,
        )
        self.pairwise_distance = Histogram(
            "pinrec_response_pairwise_cosine_distance",
            "Diversity: mean pairwise cosine distance of the returned item embeddings",
            ["surface"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5),
            registry=r,
        )
        self.staleness = Histogram(
            "pinrec_feature_staleness_seconds",
            "Request time minus the newest event in the user's sequence",
            ["surface"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 21600, 86400, 604800),
            registry=r,
        )
        self.cold_starts = Counter(
            "pinrec_cold_start_total",
            "Requests answered without a usable history (context or popularity)",
            ["surface"],
            registry=r,
        )
        self.model_info = Gauge(
            "pinrec_model_info", "The artifact being served (value 1)", ["version"], registry=r
        )
        self.swaps = Counter("pinrec_artifact_swaps_total", "Artifacts swapped in while serving", registry=r)

    def answered(self, surface: str, answer: Recommendation, features_seconds: float) -> None:
        """One request answered: its stage times (the feature read added to the total) and its answer."""
        timings = {**answer.timings, "features": features_seconds}
        timings["total"] = timings.get("total", 0.0) + features_seconds
        for stage in STAGES:
            if stage in timings:
                self.stage_seconds.labels(surface, stage).observe(timings[stage])
        self.requests.labels(surface, "ok").inc()
        self.candidates.labels(surface).observe(len(answer.item_ids))
        self.unique_share.labels(surface).observe(answer.unique_share)
        self.pairwise_distance.labels(surface).observe(answer.pairwise_distance)
        if answer.staleness_s is not None:
            self.staleness.labels(surface).observe(answer.staleness_s)
        if answer.cold_start:
            self.cold_starts.labels(surface).inc()

    def refused(self, surface: str) -> None:
        """A request that failed validation (HTTP 400 / INVALID_ARGUMENT)."""
        self.requests.labels(surface, "invalid").inc()

    def timed_out(self, surface: str) -> None:
        """A request not answered within the server's deadline (HTTP 504 / DEADLINE_EXCEEDED)."""
        self.requests.labels(surface, "timeout").inc()

    def failed(self, surface: str) -> None:
        """A valid request whose answer raised."""
        self.requests.labels(surface, "error").inc()

    def serving(self, version: str) -> None:
        """The artifact now served (the first one, or one just swapped in: see `swapped`)."""
        self.model_info.clear()
        self.model_info.labels(version).set(1)

    def swapped(self, version: str) -> None:
        self.swaps.inc()
        self.serving(version)
