"""`pinrec features apply`, `pinrec produce` and `pinrec consume`.

Heavy libraries (Feast, kafka-python) are imported inside the commands, so `pinrec --help` starts fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pinrec.commands.process import run_until_stopped
from pinrec.options import add_kafka_options, add_store_options, feature_store, kafka_bootstrap
from pinrec.settings import Settings

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    features = subparsers.add_parser("features", help="the Feast feature repository")
    actions = features.add_subparsers(dest="action", required=True)
    apply = actions.add_parser("apply", help="register the entity, sources and feature view")
    add_store_options(apply)
    apply.set_defaults(handler=run_features)

    produce = subparsers.add_parser(
        "produce", help="send events to a Kafka topic, keyed by user, at a given rate"
    )
    add_kafka_options(produce)
    produce.add_argument("--topic", required=True)
    produce.add_argument(
        "--source", default="synthetic", help="'synthetic' or the path of a Parquet event log"
    )
    produce.add_argument(
        "--users", type=int, default=100_000, help="synthetic: distinct users (Zipf activity)"
    )
    produce.add_argument("--events", type=int, default=100_000, help="synthetic: events to send")
    produce.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    produce.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    produce.add_argument(
        "--keep-times", action="store_true", help="send logged event times, not the send time"
    )
    produce.add_argument("--partitions", type=int, default=3, help="partitions when the topic is created")
    produce.set_defaults(handler=run_produce)

    consume = subparsers.add_parser(
        "consume",
        help="keep users' activity sequences fresh in the Feast online store",
        description="Consumer group that merges events into user sequences and writes them through Feast. "
        "Bootstrap: --bootstrap, else PINREC_KAFKA_BOOTSTRAP, else the broker of `pinrec local up`. "
        "Invalid messages go to <topic>.dlq with the reason in a header. "
        "SIGTERM finishes the batch and commits.",
    )
    add_kafka_options(consume)
    consume.add_argument("--topic", required=True)
    consume.add_argument("--group", default="pinrec-sequences", help="consumer group id")
    consume.add_argument("--partitions", type=int, default=3, help="partitions when the topic is created")
    consume.add_argument("--cap", type=int, default=200, help="sequence length kept per user")
    consume.add_argument("--max-poll-records", type=int, default=20_000, help="largest batch")
    consume.add_argument("--metrics-port", type=int, default=9400, help="port of /metrics (0: any free port)")
    consume.add_argument("--idle-exit", type=float, help="exit after this many seconds without messages")
    add_store_options(consume)
    consume.set_defaults(handler=run_consume)


def run_features(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.featurestore.store import apply

    apply(feature_store(settings))
    return 0


def run_produce(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.stream.producer import produce
    from pinrec.stream.topics import ensure_topics
    from pinrec.stream.workload import event_log_stream, zipf_user_stream

    bootstrap = kafka_bootstrap(settings)
    if args.source == "synthetic":
        events, total = (
            zipf_user_stream(args.users, args.events, settings.vocabulary, args.seed),
            args.events,
        )
    else:
        path = Path(args.source)
        if not path.exists():
            raise ValueError(f"--source {path} does not exist (give 'synthetic' or a Parquet event log)")
        events, total = event_log_stream(path), None
    ensure_topics(bootstrap, {args.topic: args.partitions}, security=settings.kafka_security)
    report = produce(
        bootstrap,
        args.topic,
        events,
        rate=args.rate,
        stamp_now=not args.keep_times,
        total=total,
        security=settings.kafka_security,
    )
    print(f"sent {report.events:,} events in {report.seconds:.1f} s ({report.events_per_s:,.0f} events/s)")
    return 0


def run_consume(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.featurestore.store import SequenceStore, open_store
    from pinrec.stream.consumer import ConsumerSettings, SequenceConsumer
    from pinrec.stream.events import EventLimits
    from pinrec.stream.metrics import ConsumerMetrics
    from pinrec.stream.topics import ensure_topics

    consumer_settings = ConsumerSettings(
        bootstrap=kafka_bootstrap(settings),
        topic=args.topic,
        group_id=args.group,
        sequence_cap=args.cap,
        max_poll_records=args.max_poll_records,
        security=settings.kafka_security,
    )
    store = open_store(feature_store(settings))
    ensure_topics(
        consumer_settings.bootstrap,
        {args.topic: args.partitions, consumer_settings.dlq_topic: 1},
        security=settings.kafka_security,
    )
    metrics = ConsumerMetrics()
    consumer = SequenceConsumer(
        consumer_settings, SequenceStore(store), settings.vocabulary, EventLimits(), metrics
    )
    log.info("consuming %s as group %s", args.topic, args.group)
    return run_until_stopped(
        metrics.registry, args.metrics_port, lambda stop: consumer.run(stop, idle_exit_s=args.idle_exit)
    )
