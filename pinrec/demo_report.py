"""The demo's summary: metrics read back from Prometheus (or the /metrics endpoints), a Markdown report and
PNG plots (training curves, request latency, recall and diversity against the budget)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

STAGES = ("features", "prefill", "decode", "search", "total")


@dataclass
class DemoFacts:
    config: object
    stack: dict
    model: object = None
    server: object = None
    consumer_metrics: str = ""
    consumer_pid: int = 0
    stream: object = None
    live: object = None
    mixes: list = field(default_factory=list)
    traffic: object = None
    metrics: dict = field(default_factory=dict)
    total_seconds: float = 0.0


# --- metrics ------------------------------------------------------------------------------------------


def scrape(url: str) -> dict[str, list]:
    """The samples of a /metrics endpoint, by sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list] = {}
    for family in text_string_to_metric_families(requests.get(url, timeout=5).text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def histogram_quantile(samples: list, quantile: float, **labels: str) -> float | None:
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


def total(samples: list, **labels: str) -> float:
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


def _prometheus(url: str, query: str) -> float | None:
    try:
        body = requests.get(
            f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": query}), timeout=5
        ).json()
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None
    except (requests.RequestException, KeyError, ValueError, IndexError):
        return None


def freshness_buckets(consumer_metrics: str) -> list:
    """The consumer's freshness histogram now (to subtract from a later scrape)."""
    return scrape(consumer_metrics).get("pinrec_feature_freshness_seconds_bucket", [])


def _minus(after: list, before: list) -> list:
    """Cumulative bucket samples of the events observed between two scrapes."""
    earlier = {tuple(sorted(s.labels.items())): s.value for s in before}
    return [s._replace(value=s.value - earlier.get(tuple(sorted(s.labels.items())), 0.0)) for s in after]


def scrape_summary(
    prometheus: str | None, server_http: str, consumer_metrics: str, live_baseline: list | None = None
) -> dict:
    """Latency per stage (p50/p99), freshness, diversity and throughput from the processes' /metrics; when
    Prometheus runs, the same request counter and p99 are read back from it too (it scrapes both)."""
    serve = scrape(f"{server_http}/metrics")
    consume = scrape(consumer_metrics)
    stage_buckets = serve.get("pinrec_request_stage_seconds_bucket", [])
    summary: dict = {"stages": {}}
    for stage in STAGES:
        p50 = histogram_quantile(stage_buckets, 0.5, stage=stage)
        p99 = histogram_quantile(stage_buckets, 0.99, stage=stage)
        if p50 is not None:
            summary["stages"][stage] = {"p50_ms": p50 * 1000, "p99_ms": p99 * 1000}
    freshness = consume.get("pinrec_feature_freshness_seconds_bucket", [])
    summary["freshness_p50_s"] = histogram_quantile(freshness, 0.5)
    summary["freshness_p99_s"] = histogram_quantile(freshness, 0.99)
    if live_baseline is not None:  # the live events only (the replayed history is old by design)
        live = _minus(freshness, live_baseline)
        summary["live_freshness_p50_s"] = histogram_quantile(live, 0.5)
        summary["live_freshness_p99_s"] = histogram_quantile(live, 0.99)
    unique = (
        serve.get("pinrec_response_unique_share_sum", []),
        serve.get("pinrec_response_unique_share_count", []),
    )
    distance = (
        serve.get("pinrec_response_pairwise_cosine_distance_sum", []),
        serve.get("pinrec_response_pairwise_cosine_distance_count", []),
    )
    summary["unique_share_mean"] = total(unique[0]) / max(total(unique[1]), 1)
    summary["pairwise_distance_mean"] = total(distance[0]) / max(total(distance[1]), 1)
    summary["requests_ok"] = total(serve.get("pinrec_requests_total", []), status="ok")
    summary["requests_invalid"] = total(serve.get("pinrec_requests_total", []), status="invalid")
    summary["events_consumed"] = total(consume.get("pinrec_consumer_events_consumed_total", []))
    summary["events_dead_lettered"] = total(consume.get("pinrec_consumer_events_dead_lettered_total", []))
    summary["source"] = "/metrics"
    if prometheus:
        import time

        deadline = time.monotonic() + 20  # the first scrape of a new target takes a few seconds
        seen = None
        while time.monotonic() < deadline:
            seen = _prometheus(prometheus, 'sum(pinrec_requests_total{status="ok"})')
            if seen is not None and seen >= summary["requests_ok"]:
                break
            time.sleep(1)
        summary["prometheus_requests_ok"] = seen
        summary["prometheus_total_p99_s"] = _prometheus(
            prometheus,
            'histogram_quantile(0.99, sum by (le) (pinrec_request_stage_seconds_bucket{stage="total"}))',
        )
        summary["source"] = f"Prometheus {prometheus} and /metrics"
    return summary


# --- report -------------------------------------------------------------------------------------------


def _plots(out: Path, facts: DemoFacts) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pinrec.model.train import plot_curves

    plots = {
        "training": "training-curves.png",
        "latency": "latency.png",
        "budget": "recall-diversity-budget.png",
    }
    plot_curves(facts.model.curves, out / plots["training"], "validation metric")

    figure, axis = plt.subplots(figsize=(6, 4))
    latencies = facts.traffic.latencies_ms
    axis.hist(latencies, bins=30, color="tab:blue", alpha=0.8)
    for q, style in ((50, "--"), (99, ":")):
        axis.axvline(
            np.percentile(latencies, q),
            color="black",
            linestyle=style,
            label=f"p{q} {np.percentile(latencies, q):.1f} ms",
        )
    axis.set(
        xlabel="end-to-end request latency (ms, REST v1/v2 and gRPC)",
        ylabel="requests",
        title="Request latency",
    )
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / plots["latency"], dpi=110)
    plt.close(figure)

    rows = facts.model.budget_curve
    figure, axis = plt.subplots(figsize=(6, 4))
    budgets = [r["budget"] for r in rows]
    axis.plot(budgets, [r["recall"] for r in rows], marker="o", label="recall of the next 3 days")
    axis.plot(budgets, [r["unique_share"] for r in rows], marker="s", label="unique share (diversity)")
    axis.plot(budgets, [r["coverage"] for r in rows], marker="^", label="catalog coverage")
    axis.set(
        xscale="log",
        xlabel="budget N (items per request)",
        ylabel="share",
        title="Recall and diversity vs budget",
    )
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / plots["budget"], dpi=110)
    plt.close(figure)
    return plots


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} ms"


def write_report(out: Path, facts: DemoFacts) -> str:
    """Write summary.md and the PNGs; return the summary text printed to the console."""
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(out, facts)
    m, live, stream, traffic = facts.metrics, facts.live, facts.stream, facts.traffic
    lines = [
        "# PinRec demo summary",
        "",
        f"Whole run: {facts.total_seconds:,.0f} s. Metrics source: {m['source']}.",
        "",
        "## Streaming",
        f"- {stream.events:,} events of {facts.config.streamed_users} users through Kafka into Feast "
        "(SQLite): "
        f"{stream.events_per_s:,.0f} events/s end to end; consumer events {m['events_consumed']:,.0f}, "
        f"dead-lettered {m['events_dead_lettered']:,.0f}",
        f"- feature freshness (event time -> written to Feast) of the live events: p50 "
        f"{_seconds(m.get('live_freshness_p50_s'))}, p99 {_seconds(m.get('live_freshness_p99_s'))} "
        f"(all events, the replayed history included: p99 {_seconds(m['freshness_p99_s'])}, capped by the "
        "histogram's top bucket)",
        f"- live: user {live.user_id} saved {facts.config.live_events} "
        f"items of topic {live.new_topic} (new to them); their home feed changed "
        f"**{live.freshness_ms:,.0f} ms** after the events were sent; share of that topic in the top 20: "
        f"{live.new_topic_share_before:.0%} -> {live.new_topic_share_after:.0%}",
        "",
        "## Serving latency per stage (server histograms)",
        "",
        "| stage | p50 | p99 |",
        "|---|---|---|",
        *[f"| {stage} | {_ms(v['p50_ms'])} | {_ms(v['p99_ms'])} |" for stage, v in m["stages"].items()],
        "",
        f"End to end from the client ({len(traffic.latencies_ms)} requests, REST v1/v2 and gRPC, one at a "
        f"time): p50 {np.percentile(traffic.latencies_ms, 50):.1f} ms, "
        f"p99 {np.percentile(traffic.latencies_ms, 99):.1f} ms, {traffic.requests_per_s:,.0f} requests/s, "
        f"{traffic.errors} errors. Requests ok {m['requests_ok']:,.0f}"
        + (
            f"; Prometheus read back {m['prometheus_requests_ok']:,.0f} ok requests, total p99 "
            f"{_ms((m.get('prometheus_total_p99_s') or 0) * 1000)}."
            if m.get("prometheus_requests_ok") is not None
            else "."
        ),
        "",
        "## Outcome budgets per surface (k = 50)",
        "",
        "| surface | context | budget | items by producing query | items made for save / click (truth) "
        "| topics | pairwise distance |",
        "|---|---|---|---|---|---|---|",
    ]
    for mix in facts.mixes:
        produced = ", ".join(f"{o} {s:.0%}" for o, s in mix.outcome_share.items())
        context = ", ".join(f"{k}={v}" for k, v in mix.context.items()) or "-"
        asked = ", ".join(f"{o} {s:.0%}" for o, s in _budget(mix.budget).items())
        made_for = f"{mix.archetype_share.get('save', 0):.0%} / {mix.archetype_share.get('click', 0):.0%}"
        lines.append(
            f"| {mix.surface} | {context} | {mix.budget} ({asked}) | {produced} | {made_for} "
            f"| {mix.topics} | {mix.pairwise_distance:.3f} |"
        )
    lines += [
        "",
        f"Diversity over all requests: unique share {m['unique_share_mean']:.3f}, mean pairwise cosine "
        f"distance {m['pairwise_distance_mean']:.3f}.",
        "",
        "## Recall and diversity against the budget (held-out users, next 3 days)",
        "",
        "| budget | recall | unique share | catalog coverage |",
        "|---|---|---|---|",
        *[
            f"| {r['budget']} | {r['recall']:.3f} | {r['unique_share']:.3f} | {r['coverage']:.3f} |"
            for r in facts.model.budget_curve
        ],
        "",
        f"Plots: `{plots['training']}`, `{plots['latency']}`, `{plots['budget']}`.",
    ]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def _budget(name: str) -> dict[str, float]:
    from pinrec.demo_traffic import BUDGETS

    return BUDGETS[name]


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f} s"
