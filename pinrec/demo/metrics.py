"""The demo's figures read back from the processes' /metrics endpoints and, when it runs, from Prometheus."""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass, replace

import requests
from prometheus_client.samples import Sample

from pinrec.bench.scrape import scrape, total

STAGES = ("features", "prefill", "decode", "search", "total")


@dataclass(frozen=True)
class StageLatency:
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class MetricsSummary:
    stages: dict[str, StageLatency]  # the server's request stages that saw requests
    freshness_p50_s: float | None  # all events, the replayed history included
    freshness_p99_s: float | None
    live_freshness_p50_s: float | None  # the live events only; None without a baseline
    live_freshness_p99_s: float | None
    unique_share_mean: float
    pairwise_distance_mean: float
    requests_ok: float
    requests_invalid: float
    events_consumed: float
    events_dead_lettered: float
    source: str  # where the figures come from
    prometheus_requests_ok: float | None = None  # read back from Prometheus, when it runs
    prometheus_total_p99_s: float | None = None


def histogram_quantile(samples: list[Sample], quantile: float, **labels: str) -> float | None:
    """A quantile from cumulative `_bucket` samples (linear within the bucket, as Prometheus does)."""
    buckets: dict[float, float] = {}
    for sample in samples:
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            bound = float(sample.labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + sample.value
    if not buckets:
        return None
    bounds = sorted(buckets)
    counts = [buckets[b] for b in bounds]
    observed = counts[-1]
    if observed <= 0:
        return None
    rank = quantile * observed
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(
                count - lower_count, 1e-12
            )
        lower_bound, lower_count = bound, count
    return bounds[-2] if len(bounds) > 1 else None


def consumed_events(consumer_metrics: str) -> float:
    """Messages the stream consumer has read so far."""
    return total(scrape(consumer_metrics).get("pinrec_consumer_events_consumed_total", []))


def freshness_buckets(consumer_metrics: str) -> list[Sample]:
    """The consumer's freshness histogram now (to subtract from a later scrape)."""
    return scrape(consumer_metrics).get("pinrec_feature_freshness_seconds_bucket", [])


def _minus(after: list[Sample], before: list[Sample]) -> list[Sample]:
    """Cumulative bucket samples of the events observed between two scrapes."""
    earlier = {tuple(sorted(s.labels.items())): s.value for s in before}
    return [s._replace(value=s.value - earlier.get(tuple(sorted(s.labels.items())), 0.0)) for s in after]


def _mean(samples: dict[str, list[Sample]], histogram: str) -> float:
    return total(samples.get(f"{histogram}_sum", [])) / max(total(samples.get(f"{histogram}_count", [])), 1)


def _prometheus(url: str, query: str) -> float | None:
    try:
        body = requests.get(
            f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": query}), timeout=5
        ).json()
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None
    except (requests.RequestException, KeyError, ValueError, IndexError):
        return None


def _prometheus_requests_ok(prometheus: str, at_least: float) -> float | None:
    """The ok-request counter as Prometheus has it, once it has scraped at least what /metrics showed."""
    deadline = time.monotonic() + 20  # the first scrape of a new target takes a few seconds
    seen = None
    while time.monotonic() < deadline:
        seen = _prometheus(prometheus, 'sum(pinrec_requests_total{status="ok"})')
        if seen is not None and seen >= at_least:
            break
        time.sleep(1)
    return seen


def scrape_summary(
    prometheus: str | None,
    server_http: str,
    consumer_metrics: str,
    live_baseline: list[Sample] | None = None,
) -> MetricsSummary:
    """Latency per stage (p50/p99), freshness, diversity and throughput from the processes' /metrics; when
    Prometheus runs, the same request counter and p99 are read back from it too (it scrapes both)."""
    serve = scrape(f"{server_http}/metrics")
    consume = scrape(consumer_metrics)
    stage_buckets = serve.get("pinrec_request_stage_seconds_bucket", [])
    stages = {}
    for stage in STAGES:
        p50 = histogram_quantile(stage_buckets, 0.5, stage=stage)
        p99 = histogram_quantile(stage_buckets, 0.99, stage=stage)
        if p50 is not None:
            stages[stage] = StageLatency(p50_ms=p50 * 1000, p99_ms=p99 * 1000)
    freshness = consume.get("pinrec_feature_freshness_seconds_bucket", [])
    # The live events only (the replayed history is old by design).
    live = _minus(freshness, live_baseline) if live_baseline is not None else []
    requests_ok = total(serve.get("pinrec_requests_total", []), status="ok")
    summary = MetricsSummary(
        stages=stages,
        freshness_p50_s=histogram_quantile(freshness, 0.5),
        freshness_p99_s=histogram_quantile(freshness, 0.99),
        live_freshness_p50_s=histogram_quantile(live, 0.5),
        live_freshness_p99_s=histogram_quantile(live, 0.99),
        unique_share_mean=_mean(serve, "pinrec_response_unique_share"),
        pairwise_distance_mean=_mean(serve, "pinrec_response_pairwise_cosine_distance"),
        requests_ok=requests_ok,
        requests_invalid=total(serve.get("pinrec_requests_total", []), status="invalid"),
        events_consumed=total(consume.get("pinrec_consumer_events_consumed_total", [])),
        events_dead_lettered=total(consume.get("pinrec_consumer_events_dead_lettered_total", [])),
        source="/metrics",
    )
    if not prometheus:
        return summary
    return replace(
        summary,
        prometheus_requests_ok=_prometheus_requests_ok(prometheus, requests_ok),
        prometheus_total_p99_s=_prometheus(
            prometheus,
            'histogram_quantile(0.99, sum by (le) (pinrec_request_stage_seconds_bucket{stage="total"}))',
        ),
        source=f"Prometheus {prometheus} and /metrics",
    )
