"""`pinrec sink` (Kafka -> the Parquet event log, exactly once) and `pinrec backfill` (the event log -> the
online store's sequences).

Heavy libraries (Feast, kafka-python, pyarrow) are imported inside the commands, so `pinrec --help` starts
fast.
"""

from __future__ import annotations

import argparse
import logging
from datetime import date

from pinrec.commands.process import run_until_stopped
from pinrec.options import add_kafka_options, add_store_options, feature_store, kafka_bootstrap
from pinrec.settings import Settings

log = logging.getLogger(__name__)

LOG_FOLDER = "event_log"  # the default log: $PINREC_HOME/event_log


def register(subparsers: argparse._SubParsersAction) -> None:
    sink = subparsers.add_parser(
        "sink",
        help="write every valid event of a topic to the Parquet event log, exactly once",
        description="Consumer group that appends each valid event (impressions included) to Parquet files "
        "partitioned by event date: <out>/date=YYYY-MM-DD/part-p<partition>-<first>-<last>.parquet. "
        "Invalid messages are counted and skipped. SIGTERM writes what is buffered and commits.",
    )
    add_kafka_options(sink)
    sink.add_argument("--topic", required=True)
    sink.add_argument(
        "--out",
        metavar="URI",
        help="the event log: a path, file://, s3://bucket/prefix, gs://... (default: $PINREC_HOME/event_log)",
    )
    sink.add_argument("--group", default="pinrec-event-log", help="consumer group id")
    sink.add_argument("--partitions", type=int, default=3, help="partitions when the topic is created")
    sink.add_argument(
        "--flush-events", type=int, default=100_000, help="a partition's file is written at this many events"
    )
    sink.add_argument(
        "--flush-seconds", type=float, default=60.0, help="... or when its oldest event waited this long"
    )
    sink.add_argument("--metrics-port", type=int, default=9401, help="port of /metrics (0: any free port)")
    sink.add_argument("--idle-exit", type=float, help="exit after this many seconds without messages")
    sink.set_defaults(handler=run_sink)

    backfill = subparsers.add_parser(
        "backfill",
        help="rebuild users' online sequences from the event log",
        description="Merges each user's logged events into the stored sequence (idempotent) with writes "
        "conditional on the version read, so it is safe while consumers run.",
    )
    backfill.add_argument("--log", metavar="URI", help="the event log (default: $PINREC_HOME/event_log)")
    backfill.add_argument(
        "--since", type=date.fromisoformat, metavar="YYYY-MM-DD", help="only events of this date and later"
    )
    backfill.add_argument("--cap", type=int, default=200, help="sequence length kept per user")
    add_store_options(backfill)
    backfill.set_defaults(handler=run_backfill)


def run_sink(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.stream.events import EventLimits
    from pinrec.stream.sink import EventLogSink, SinkMetrics, SinkSettings
    from pinrec.stream.topics import ensure_topics

    sink_settings = SinkSettings(
        bootstrap=kafka_bootstrap(settings),
        topic=args.topic,
        out=args.out or str(settings.home / LOG_FOLDER),
        group_id=args.group,
        flush_events=args.flush_events,
        flush_seconds=args.flush_seconds,
        security=settings.kafka_security,
    )
    sink_settings.validate()
    ensure_topics(sink_settings.bootstrap, {args.topic: args.partitions}, security=settings.kafka_security)
    metrics = SinkMetrics()
    sink = EventLogSink(sink_settings, settings.vocabulary, EventLimits(), metrics)
    log.info("logging %s to %s as group %s", args.topic, sink_settings.out, args.group)
    return run_until_stopped(
        metrics.registry, args.metrics_port, lambda stop: sink.run(stop, idle_exit_s=args.idle_exit)
    )


def run_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.featurestore.store import SequenceStore, open_store
    from pinrec.stream.backfill import backfill

    if args.cap < 1:
        raise ValueError(f"--cap must be at least 1, got {args.cap}")
    store = SequenceStore(open_store(feature_store(settings)))
    report = backfill(
        args.log or str(settings.home / LOG_FOLDER), store, settings.vocabulary, args.cap, args.since
    )
    print(
        f"backfilled {report.users:,} users from {report.events:,} events: {report.written:,} sequences "
        f"written, {report.conflicts:,} conflicting writes retried, {report.unknown:,} events skipped "
        "(action or surface not in the vocabulary)"
    )
    return 0
