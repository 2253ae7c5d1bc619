"""`pinrec features apply`, `pinrec produce` and `pinrec consume`.

Heavy libraries (Feast, kafka-python) are imported inside the commands, so `pinrec --help` and
`pinrec local ...` start fast.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from pinrec.localstack.stack import LocalStack
from pinrec.settings import LocalStackSettings

log = logging.getLogger(__name__)


def resolve_bootstrap(given: str | None, settings: LocalStackSettings) -> str:
    """--bootstrap, else PINREC_KAFKA_BOOTSTRAP, else the broker of a running `pinrec local up`."""
    if given:
        return given
    kafka = LocalStack(settings).status()["kafka"]
    if kafka["up"]:
        return kafka["bootstrap"]
    raise ValueError(
        "no Kafka broker: pass --bootstrap HOST:PORT, set PINREC_KAFKA_BOOTSTRAP or run `pinrec local up`"
    )


def store_settings(args: argparse.Namespace, settings: LocalStackSettings):
    from pinrec.featurestore.store import FeatureStoreSettings

    redis_url = args.redis_url
    if args.online_store == "redis" and not redis_url and not settings.redis_url:
        redis = LocalStack(settings).status()["redis"]
        redis_url = redis.get("url") if redis["up"] else None
    return FeatureStoreSettings.from_env(
        repo_dir=args.repo, online_store=args.online_store, redis_url=redis_url
    )


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--online-store", choices=["sqlite", "redis"], help="default: PINREC_ONLINE_STORE or sqlite"
    )
    parser.add_argument(
        "--redis-url", help="redis://host:port/db (default: PINREC_REDIS_URL or the local stack's)"
    )
    parser.add_argument(
        "--repo", type=Path, help="feature repository folder (default: $PINREC_HOME/feature_repo)"
    )


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    features = subparsers.add_parser("features", help="the Feast feature repository")
    actions = features.add_subparsers(dest="action", required=True)
    add_store_options(actions.add_parser("apply", help="register the entity, sources and feature view"))

    produce = subparsers.add_parser(
        "produce", help="send events to a Kafka topic, keyed by user, at a given rate"
    )
    produce.add_argument("--bootstrap", help="Kafka bootstrap servers (default: see `pinrec consume --help`)")
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

    consume = subparsers.add_parser(
        "consume",
        help="keep users' activity sequences fresh in the Feast online store",
        description="Consumer group that merges events into user sequences and writes them through Feast. "
        "Bootstrap: --bootstrap, else PINREC_KAFKA_BOOTSTRAP, else the broker of `pinrec local up`. "
        "Invalid messages go to <topic>.dlq with the reason in a header. "
        "SIGTERM finishes the batch and commits.",
    )
    consume.add_argument("--bootstrap", help="Kafka bootstrap servers")
    consume.add_argument("--topic", required=True)
    consume.add_argument("--group", default="pinrec-sequences", help="consumer group id")
    consume.add_argument("--partitions", type=int, default=3, help="partitions when the topic is created")
    consume.add_argument("--cap", type=int, default=200, help="sequence length kept per user")
    consume.add_argument("--max-poll-records", type=int, default=20_000, help="largest batch")
    consume.add_argument("--metrics-port", type=int, default=9400, help="port of /metrics (0: any free port)")
    consume.add_argument("--idle-exit", type=float, help="exit after this many seconds without messages")
    add_store_options(consume)


def run_features(args: argparse.Namespace, settings: LocalStackSettings) -> int:
    from pinrec.featurestore.store import apply

    apply(store_settings(args, settings))
    return 0


def run_produce(args: argparse.Namespace, settings: LocalStackSettings) -> int:
    from pinrec.featurestore.schema import Vocabulary
    from pinrec.stream.producer import produce
    from pinrec.stream.topics import ensure_topics
    from pinrec.stream.workload import event_log_stream, zipf_user_stream

    bootstrap = resolve_bootstrap(args.bootstrap, settings)
    if args.source == "synthetic":
        events, total = (
            zipf_user_stream(args.users, args.events, Vocabulary.from_env(), args.seed),
            args.events,
        )
    else:
        path = Path(args.source)
        if not path.exists():
            raise ValueError(f"--source {path} does not exist (give 'synthetic' or a Parquet event log)")
        events, total = event_log_stream(path), None
    ensure_topics(bootstrap, {args.topic: args.partitions})
    report = produce(
        bootstrap, args.topic, events, rate=args.rate, stamp_now=not args.keep_times, total=total
    )
    print(f"sent {report.events:,} events in {report.seconds:.1f} s ({report.events_per_s:,.0f} events/s)")
    return 0


def run_consume(args: argparse.Namespace, settings: LocalStackSettings) -> int:
    from prometheus_client import start_http_server

    from pinrec.featurestore.schema import Vocabulary
    from pinrec.featurestore.store import SequenceStore, open_store
    from pinrec.stream.consumer import ConsumerSettings, SequenceConsumer
    from pinrec.stream.events import EventLimits
    from pinrec.stream.metrics import ConsumerMetrics
    from pinrec.stream.topics import ensure_topics

    consumer_settings = ConsumerSettings(
        bootstrap=resolve_bootstrap(args.bootstrap, settings),
        topic=args.topic,
        group_id=args.group,
        sequence_cap=args.cap,
        max_poll_records=args.max_poll_records,
    )
    store = open_store(store_settings(args, settings))
    ensure_topics(consumer_settings.bootstrap, {args.topic: args.partitions, consumer_settings.dlq_topic: 1})
    metrics = ConsumerMetrics()
    server, _ = start_http_server(args.metrics_port, addr="0.0.0.0", registry=metrics.registry)
    log.info("metrics on http://127.0.0.1:%d/metrics", server.server_port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    consumer = SequenceConsumer(
        consumer_settings, SequenceStore(store), Vocabulary.from_env(), EventLimits(), metrics
    )
    log.info("consuming %s as group %s", args.topic, args.group)
    consumer.run(stop, idle_exit_s=args.idle_exit)
    server.shutdown()
    return 0
