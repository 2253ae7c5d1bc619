"""Serving metrics (architecture §4.5), on the model server's own /metrics next to KServe's histograms."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)
STAGES = ("features", "prefill", "decode", "search", "total")

STAGE_SECONDS = Histogram(
    "pinrec_request_stage_seconds",
    "Time per request in each stage (features, prefill, decode, search, total)",
    ["surface", "stage"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS = Counter(
    "pinrec_requests_total", "Recommendation requests by result (ok, invalid, error)", ["surface", "status"]
)
CANDIDATES = Histogram(
    "pinrec_candidates_returned",
    "Items returned per request",
    ["surface"],
    buckets=(0, 1, 5, 10, 25, 50, 100, 200, 500, 1000),
)
UNIQUE_SHARE = Histogram(
    "pinrec_response_unique_share",
    "Diversity: share of unique items among everything the queries retrieved, before dedup",
    ["surface"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)
PAIRWISE_DISTANCE = Histogram(
    "pinrec_response_pairwise_cosine_distance",
    "Diversity: mean pairwise cosine distance of the returned item embeddings",
    ["surface"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5),
)
STALENESS = Histogram(
    "pinrec_feature_staleness_seconds",
    "Request time minus the newest event in the user's sequence",
    ["surface"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 21600, 86400, 604800),
)
COLD_STARTS = Counter(
    "pinrec_cold_start_total",
    "Requests answered without a usable history (context or popularity)",
    ["surface"],
)
MODEL_INFO = Gauge("pinrec_model_info", "The artifact being served (value 1)", ["version"])
SWAPS = Counter("pinrec_artifact_swaps_total", "Artifacts swapped in while serving")


def observe(surface: str, recommendation, features_seconds: float) -> None:
    timings = {**recommendation.timings, "features": features_seconds}
    timings["total"] = timings.get("total", 0.0) + features_seconds
    for stage in STAGES:
        if stage in timings:
            STAGE_SECONDS.labels(surface, stage).observe(timings[stage])
    REQUESTS.labels(surface, "ok").inc()
    CANDIDATES.labels(surface).observe(len(recommendation.item_ids))
    UNIQUE_SHARE.labels(surface).observe(recommendation.unique_share)
    PAIRWISE_DISTANCE.labels(surface).observe(recommendation.pairwise_distance)
    if recommendation.staleness_s is not None:
        STALENESS.labels(surface).observe(recommendation.staleness_s)
    if recommendation.cold_start:
        COLD_STARTS.labels(surface).inc()


def set_model(version: str) -> None:
    MODEL_INFO.clear()
    MODEL_INFO.labels(version).set(1)
