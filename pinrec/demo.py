"""`pinrec demo`: the main job on embedded defaults.

Today it provisions and starts the local stack, streams synthetic engagement events (in the event contract
of the architecture) through a real Kafka topic keyed by user, reads them back with a consumer group, checks
that every event arrived exactly once and in order per user, and has Prometheus scrape the demo's own
throughput metric. Model training, serving and the Feast consumer join as their issues land.
"""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry, Counter, start_http_server
from tqdm import tqdm

from pinrec.localstack.processes import pick_port, wait_until
from pinrec.localstack.provision import install_all
from pinrec.localstack.stack import LocalStack
from pinrec.settings import LocalStackSettings
from pinrec.stream.topics import delete_topics, ensure_topics

log = logging.getLogger(__name__)

ACTIONS = ("impression", "click", "save", "long_click", "outbound")
SURFACES = ("home", "search", "related")


@dataclass(frozen=True)
class RoundTrip:
    events: int
    produce_s: float
    consume_s: float
    exactly_once: bool
    ordered_per_user: bool
    latency_p50_ms: float
    latency_p99_ms: float


def synthetic_events(count: int, users: int, seed: int = 7) -> list[dict]:
    """Events in the Kafka contract with Zipf-like user activity and increasing event times per user."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(users)]
    now_ms = int(time.time() * 1000)
    events = []
    for user_id in rng.choices(range(1, users + 1), weights=weights, k=count):
        now_ms += rng.randint(0, 3)
        events.append(
            {
                "v": 1,
                "event_id": uuid.uuid4().hex,
                "user_id": user_id,
                "item_id": rng.randint(1, 50_000),
                "action": rng.choice(ACTIONS),
                "surface": rng.choice(SURFACES),
                "ts_ms": now_ms,
            }
        )
    return events


def _produce(bootstrap: str, topic: str, events: list[dict]) -> float:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, enable_idempotence=True)
    started = time.monotonic()
    for event in events:
        producer.send(
            topic,
            key=str(event["user_id"]).encode(),
            value=json.dumps(event).encode(),
            timestamp_ms=int(time.time() * 1000),
        )
    producer.flush()
    producer.close()
    return time.monotonic() - started


def stream_round_trip(bootstrap: str, topic: str, events: list[dict], counter: Counter) -> RoundTrip:
    """Produce in a thread while a consumer group reads; check exactly-once and per-user order."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-demo",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    wait_until(
        lambda: consumer.poll(timeout_ms=200) == {} and bool(consumer.assignment()),
        what="consumer group assignment",
        timeout_s=30,
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        produce_s = pool.submit(_produce, bootstrap, topic, events)
        seen: dict[str, int] = defaultdict(int)
        per_user: dict[int, list[int]] = defaultdict(list)
        latencies_ms: list[float] = []
        started = time.monotonic()
        with tqdm(total=len(events), desc="events through Kafka", unit="ev") as bar:
            while bar.n < len(events) and time.monotonic() - started < 120:
                for messages in consumer.poll(timeout_ms=500, max_records=2000).values():
                    for message in messages:
                        event = json.loads(message.value)
                        seen[event["event_id"]] += 1
                        per_user[event["user_id"]].append(event["ts_ms"])
                        latencies_ms.append(time.time() * 1000 - message.timestamp)
                    counter.inc(len(messages))
                    bar.update(len(messages))
                consumer.commit()
        consume_s = time.monotonic() - started
        consumer.close()
        latencies = np.array(latencies_ms) if latencies_ms else np.array([np.nan])
        expected = {event["event_id"] for event in events}
        return RoundTrip(
            events=len(events),
            produce_s=produce_s.result(),
            consume_s=consume_s,
            exactly_once=set(seen) == expected and all(count == 1 for count in seen.values()),
            ordered_per_user=all(ts == sorted(ts) for ts in per_user.values()),
            latency_p50_ms=float(np.quantile(latencies, 0.5)),
            latency_p99_ms=float(np.quantile(latencies, 0.99)),
        )


def prometheus_value(url: str, query: str) -> float | None:
    request = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(request, timeout=5) as response:
        result = json.load(response)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def run_demo(
    settings: LocalStackSettings, *, events: int, users: int, keep_running: bool, install: bool
) -> int:
    if install:
        log.info("provisioning tools (first run downloads Kafka jars and Debian packages)")
        install_all(settings, go_tools=False)
    # Services this run starts die with it (even on kill -9) unless the user wants them kept.
    stack = LocalStack(settings, bound_to_parent=not keep_running)
    log.info("starting the local stack")
    started = stack.up({"redis": None, "prometheus": None})
    try:
        report = stack.status()
        bootstrap = report["kafka"]["bootstrap"]
        registry = CollectorRegistry()
        counter = Counter(
            "pinrec_demo_events_consumed_total", "Demo events read back from Kafka", registry=registry
        )
        metrics_port = pick_port(0)
        metrics_server, _ = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
        target = stack.register_scrape_target("demo", f"127.0.0.1:{metrics_port}")

        topic = f"pinrec.demo.events.{uuid.uuid4().hex[:8]}"
        ensure_topics(bootstrap, {topic: 3})
        result = stream_round_trip(bootstrap, topic, synthetic_events(events, users), counter)
        delete_topics(bootstrap, [topic])

        scraped = None
        if report["prometheus"]["up"]:
            url = report["prometheus"]["url"]
            query = "pinrec_demo_events_consumed_total"
            wait_until(
                lambda: (prometheus_value(url, query) or 0) >= events, what="Prometheus scrape", timeout_s=30
            )
            scraped = prometheus_value(url, query)
        metrics_server.shutdown()
        if target:
            target.unlink()
        _print_summary(report, result, scraped)
        ok = result.exactly_once and result.ordered_per_user
        if keep_running:
            print("\nthe stack keeps running; stop it with `pinrec local down`")
        return 0 if ok else 1
    finally:
        if not keep_running:
            stack.down(only=started)


def _print_summary(report: dict[str, dict], result: RoundTrip, scraped: float | None) -> None:
    print("\nPinRec demo summary")
    for name, info in report.items():
        print(
            f"  {name:<11} {'up' if info['up'] else 'down':<5} "
            f"{info.get('bootstrap') or info.get('url') or info.get('reason', '')}"
        )
    print(f"  events through Kafka    {result.events:,} (3 partitions, keyed by user)")
    print(f"  produce rate            {result.events / result.produce_s:,.0f} events/s")
    print(f"  consume rate            {result.events / result.consume_s:,.0f} events/s")
    print(f"  produce-to-consume p50  {result.latency_p50_ms:,.0f} ms, p99 {result.latency_p99_ms:,.0f} ms")
    print(f"  exactly once            {result.exactly_once}")
    print(f"  ordered per user        {result.ordered_per_user}")
    if scraped is not None:
        print(f"  Prometheus scraped      pinrec_demo_events_consumed_total = {scraped:,.0f}")
