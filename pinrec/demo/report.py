"""The demo's report: a Markdown summary and PNG plots (training curves, request latency, recall and
diversity against the budget)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pinrec.demo.config import BUDGETS, DemoConfig

if TYPE_CHECKING:
    from pinrec.bench.load import LoadResult
    from pinrec.demo.metrics import MetricsSummary
    from pinrec.demo.model import DemoModel
    from pinrec.demo.traffic import LiveFacts, MixFacts, StreamFacts
    from pinrec.server_process import ServerProcess


@dataclass(frozen=True)
class DemoFacts:
    """What the demo found, for its report."""

    config: DemoConfig
    model: DemoModel
    server: ServerProcess
    consumer_metrics: str  # the consumer's /metrics URL
    consumer_pid: int
    stream: StreamFacts
    live: LiveFacts
    mixes: list[MixFacts]
    traffic: LoadResult  # the burst of mixed REST and gRPC requests
    metrics: MetricsSummary
    total_seconds: float


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

    points = facts.model.budget_curve
    figure, axis = plt.subplots(figsize=(6, 4))
    budgets = [p.budget for p in points]
    axis.plot(budgets, [p.recall for p in points], marker="o", label="recall of the next 3 days")
    axis.plot(budgets, [p.unique_share for p in points], marker="s", label="unique share (diversity)")
    axis.plot(budgets, [p.coverage for p in points], marker="^", label="catalog coverage")
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
        f"Whole run: {facts.total_seconds:,.0f} s. Metrics source: {m.source}.",
        "",
        "## Streaming",
        f"- {stream.events:,} events of {facts.config.streamed_users} users through Kafka into Feast "
        "(SQLite): "
        f"{stream.events_per_s:,.0f} events/s end to end; consumer events {m.events_consumed:,.0f}, "
        f"dead-lettered {m.events_dead_lettered:,.0f}",
        f"- feature freshness (event time -> written to Feast) of the live events: p50 "
        f"{_seconds(m.live_freshness_p50_s)}, p99 {_seconds(m.live_freshness_p99_s)} "
        f"(all events, the replayed history included: p99 {_seconds(m.freshness_p99_s)}, capped by the "
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
        *[f"| {stage} | {_ms(v.p50_ms)} | {_ms(v.p99_ms)} |" for stage, v in m.stages.items()],
        "",
        f"End to end from the client ({len(traffic.latencies_ms)} requests, REST v1/v2 and gRPC, one at a "
        f"time): p50 {np.percentile(traffic.latencies_ms, 50):.1f} ms, "
        f"p99 {np.percentile(traffic.latencies_ms, 99):.1f} ms, {traffic.requests_per_s:,.0f} requests/s, "
        f"{traffic.errors} errors. Requests ok {m.requests_ok:,.0f}"
        + (
            f"; Prometheus read back {m.prometheus_requests_ok:,.0f} ok requests, total p99 "
            f"{_ms((m.prometheus_total_p99_s or 0) * 1000)}."
            if m.prometheus_requests_ok is not None
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
        asked = ", ".join(f"{o} {s:.0%}" for o, s in BUDGETS[mix.budget].items())
        made_for = f"{mix.archetype_share.get('save', 0):.0%} / {mix.archetype_share.get('click', 0):.0%}"
        lines.append(
            f"| {mix.surface} | {context} | {mix.budget} ({asked}) | {produced} | {made_for} "
            f"| {mix.topics} | {mix.pairwise_distance:.3f} |"
        )
    lines += [
        "",
        f"Diversity over all requests: unique share {m.unique_share_mean:.3f}, mean pairwise cosine "
        f"distance {m.pairwise_distance_mean:.3f}.",
        "",
        "## Recall and diversity against the budget (held-out users, next 3 days)",
        "",
        "| budget | recall | unique share | catalog coverage |",
        "|---|---|---|---|",
        *[
            f"| {p.budget} | {p.recall:.3f} | {p.unique_share:.3f} | {p.coverage:.3f} |"
            for p in facts.model.budget_curve
        ],
        "",
        f"Plots: `{plots['training']}`, `{plots['latency']}`, `{plots['budget']}`.",
    ]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f} s"
