"""`pinrec bench stream` (protocol E): sustained consumer throughput through Feast against a floor consumer
that reads the same topic and writes nothing, the event-log sink's throughput into Parquet on that topic,
and end-to-end freshness at a steady input rate.

Everything runs on a private local stack (real Kafka, Redis) started for the run and stopped after it.
The producer of the steady phase is a separate process, as a client would be.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pinrec.bench.report import print_table, write_json
from pinrec.featurestore.schema import Vocabulary
from pinrec.featurestore.store import FeatureStoreSettings, SequenceStore, apply
from pinrec.localstack.processes import die_with_parent
from pinrec.localstack.stack import LocalStack
from pinrec.settings import LocalStackSettings
from pinrec.stream.consumer import ConsumerSettings, NullSink, SequenceConsumer, SequenceSink
from pinrec.stream.events import EventLimits
from pinrec.stream.metrics import ConsumerMetrics
from pinrec.stream.producer import produce
from pinrec.stream.sink import EventLogSink, SinkMetrics, SinkSettings
from pinrec.stream.topics import ensure_topics
from pinrec.stream.workload import zipf_user_stream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamBenchConfig:
    online_store: str = "redis"
    users: int = 100_000  # distinct users, Zipf-like activity
    events: int = 300_000  # events of the throughput phase
    zipf_exponent: float = 1.1
    sequence_cap: int = 200
    partitions: int = 3
    steady_rate: float = 2_000.0  # events/s of the freshness phase
    steady_seconds: float = 30.0
    max_poll_records: int = 20_000
    faults: bool = True  # the sink's kill -9 check and the fault run (pinrec.bench.faults)


@dataclass
class ConsumerRun:
    events_per_s: float
    seconds: float
    metrics: ConsumerMetrics


def _run_timed(
    run: Callable[[threading.Event], None],
    finished: Callable[[], bool],
    failed: Callable[[], bool] = lambda: False,
) -> float:
    """Run a worker (run(stop)) on a thread until finished() or failed() holds; the seconds from its start
    (group join included, which only makes the figure conservative) to the batch that finished it."""
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(stop,), daemon=True)
    started = time.monotonic()
    thread.start()
    deadline = started + 1800
    while time.monotonic() < deadline and thread.is_alive() and not finished() and not failed():
        time.sleep(0.02)
    seconds = time.monotonic() - started
    stop.set()
    thread.join(timeout=60)
    return seconds


def _consume_until(
    settings: ConsumerSettings,
    sink: SequenceSink,
    expected: int,
    metrics: ConsumerMetrics,
    feeder: subprocess.Popen | None = None,
    feeder_log: Path | None = None,
) -> ConsumerRun:
    """Run a consumer until it has read `expected` messages."""
    consumer = SequenceConsumer(settings, sink, Vocabulary(), EventLimits(), metrics)

    def feeder_failed() -> bool:
        return feeder is not None and feeder.poll() not in (None, 0)

    def consumed() -> float:
        return metrics.value("pinrec_consumer_events_consumed_total")

    seconds = _run_timed(consumer.run, lambda: consumed() >= expected, feeder_failed)
    if feeder_failed():
        tail = feeder_log.read_text(errors="replace")[-2000:] if feeder_log else ""
        raise RuntimeError(f"the producer process failed (exit {feeder.returncode}):\n{tail}")
    if consumed() < expected:
        raise RuntimeError(f"consumer read {consumed():,} of {expected:,} messages")
    log.info("read %d messages in %.1f s", consumed(), seconds)
    return ConsumerRun(consumed() / seconds, seconds, metrics)


def _log_until(settings: SinkSettings, expected: int) -> float:
    """Run the event-log sink until it has written (or refused) `expected` messages; events/s."""
    metrics = SinkMetrics()
    sink = EventLogSink(settings, Vocabulary(), EventLimits(), metrics)

    def logged() -> float:
        return metrics.value("pinrec_sink_events_written_total")

    seconds = _run_timed(
        sink.run, lambda: logged() + metrics.value("pinrec_sink_invalid_events_total") >= expected
    )
    if logged() < expected:
        raise RuntimeError(f"the sink logged {logged():,.0f} of {expected:,} events")
    log.info("logged %d events in %.1f s", logged(), seconds)
    return logged() / seconds


def run_stream_bench(config: StreamBenchConfig, json_path: Path | None, base: LocalStackSettings) -> dict:
    with tempfile.TemporaryDirectory(prefix="pinrec-bench-stream-") as tmp:
        workdir = Path(tmp)
        stack_settings = replace(
            base,
            state_dir=workdir / "stack",
            kafka_port=0,
            kafka_controller_port=0,
            redis_port=0,
            prometheus_port=0,
        )
        stack = LocalStack(stack_settings, bound_to_parent=True)
        started = stack.up({"redis": config.online_store == "redis" or config.faults, "prometheus": False})
        try:
            status = stack.status()
            bootstrap, redis_url = status["kafka"]["bootstrap"], status["redis"].get("url")
            result = _run(config, bootstrap, redis_url, workdir)
            if config.faults:
                result |= _faults(bootstrap, redis_url, workdir)
        finally:
            stack.down(only=started)
    _print(result)
    write_json(json_path, result)
    return result


def _run(config: StreamBenchConfig, bootstrap: str, redis_url: str | None, workdir: Path) -> dict:
    store = apply(FeatureStoreSettings(workdir / "feature_repo", config.online_store, redis_url))
    run_id = uuid.uuid4().hex[:8]
    topic = f"bench.stream.{run_id}"
    ensure_topics(bootstrap, {topic: config.partitions, f"{topic}.dlq": 1})
    log.info("filling %s with %d events over %d users", topic, config.events, config.users)
    events = zipf_user_stream(
        config.users, config.events, Vocabulary(), seed=1, exponent=config.zipf_exponent
    )
    produce(bootstrap, topic, events, total=config.events)

    def settings(group: str, on: str = topic) -> ConsumerSettings:
        return ConsumerSettings(
            bootstrap,
            on,
            group_id=f"{group}-{run_id}",
            sequence_cap=config.sequence_cap,
            max_poll_records=config.max_poll_records,
        )

    log.info("floor: a consumer that validates and writes nothing")
    floor = _consume_until(settings("floor"), NullSink(), config.events, ConsumerMetrics())
    log.info("event-log sink writing Parquet to %s", workdir / "event_log")
    # Partitions get unequal shares of the Zipf users: a 1 s flush interval writes every partition's tail.
    sink_settings = SinkSettings(
        bootstrap, topic, str(workdir / "event_log"), group_id=f"sink-{run_id}", flush_seconds=1.0
    )
    sink_events_per_s = _log_until(sink_settings, config.events)
    log.info("consumer writing through Feast to %s", config.online_store)
    full = _consume_until(settings("full"), SequenceStore(store), config.events, ConsumerMetrics())

    steady_topic = f"{topic}.steady"
    ensure_topics(bootstrap, {steady_topic: config.partitions, f"{steady_topic}.dlq": 1})
    steady_events = int(config.steady_rate * config.steady_seconds)
    log.info("freshness at a steady %.0f events/s for %.0f s", config.steady_rate, config.steady_seconds)
    producer_log_path = workdir / "steady-producer.log"
    producer_log = open(producer_log_path, "wb")  # noqa: SIM115 (closed after the phase)
    producer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pinrec.cli",
            "produce",
            "--bootstrap",
            bootstrap,
            "--topic",
            steady_topic,
            "--users",
            str(config.users),
            "--events",
            str(steady_events),
            "--rate",
            str(config.steady_rate),
            "--seed",
            "2",
        ],
        stdout=producer_log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    steady_metrics = ConsumerMetrics(freshness_samples_s=[])
    steady = _consume_until(
        settings("steady", steady_topic),
        SequenceStore(store),
        steady_events,
        steady_metrics,
        feeder=producer,
        feeder_log=producer_log_path,
    )
    producer.wait(timeout=60)
    producer_log.close()
    freshness_ms = np.array(steady_metrics.freshness_samples_s) * 1000

    return {
        "benchmark": "stream",
        "protocol": "E",
        "online_store": config.online_store,
        "events_per_s": round(full.events_per_s, 1),
        "floor_events_per_s": round(floor.events_per_s, 1),
        "ratio_vs_floor": round(full.events_per_s / floor.events_per_s, 4),
        "sink_events_per_s": round(sink_events_per_s, 1),
        "freshness_p50_ms": round(float(np.quantile(freshness_ms, 0.5)), 1),
        "freshness_p99_ms": round(float(np.quantile(freshness_ms, 0.99)), 1),
        "steady_rate_events_per_s": config.steady_rate,
        "steady_achieved_events_per_s": round(steady.events_per_s, 1),
        "sequences_written": int(full.metrics.value("pinrec_consumer_sequences_written_total")),
        "events_applied": int(full.metrics.value("pinrec_consumer_events_applied_total")),
        "config": asdict(config),
    }


def _faults(bootstrap: str, redis_url: str, workdir: Path) -> dict:
    from pinrec.bench.faults import FaultBenchConfig, fault_run, sink_exactly_once

    env = {**os.environ, "PINREC_HOME": str(workdir / "home")}
    config = FaultBenchConfig()
    log.info("exactly once: kill -9 of the event-log sink mid-run, then a restart")
    result = sink_exactly_once(bootstrap, workdir, env, config)
    log.info(
        "fault run: 3 consumers (one stalled), keyless and re-partitioned traffic, Redis flushed, backfill"
    )
    return result | fault_run(bootstrap, redis_url, workdir, env, config)


def _print(result: dict) -> None:
    print_table(
        f"Stream benchmark (protocol E), online store {result['online_store']}",
        [
            ("events/s through Feast", result["events_per_s"]),
            ("floor events/s (no writes)", result["floor_events_per_s"]),
            ("ratio vs floor", result["ratio_vs_floor"]),
            ("event-log sink events/s (Parquet)", result["sink_events_per_s"]),
            (
                f"freshness p50 at {result['steady_rate_events_per_s']:.0f} ev/s (ms)",
                result["freshness_p50_ms"],
            ),
            (
                f"freshness p99 at {result['steady_rate_events_per_s']:.0f} ev/s (ms)",
                result["freshness_p99_ms"],
            ),
            ("sequences written", result["sequences_written"]),
            *_fault_rows(result),
        ],
    )


def _fault_rows(result: dict) -> list[tuple[str, object]]:
    if "fault_store_exact" not in result:
        return []
    return [
        ("sink kill -9: rows in the log", result["sink_kill9_rows_in_log"]),
        ("sink kill -9: distinct events sent", result["sink_kill9_distinct_events_sent"]),
        ("sink kill -9: exactly once", "yes" if result["sink_kill9_exactly_once"] else "NO"),
        ("fault run: users checked", result["fault_users_checked"]),
        ("fault run: users equal to the expected sequence", result["fault_users_equal"]),
        ("fault run: events expected", result["fault_events_expected"]),
        ("fault run: events found", result["fault_events_found"]),
        ("fault run: store exact", "yes" if result["fault_store_exact"] else "NO"),
        ("fault run: conflicting writes re-merged", result["fault_write_conflicts"]),
    ]
