"""The stream consumer against the real broker, Redis and Feast: nothing lost or applied twice across
crashes, broker and Redis restarts, consumer groups and poison messages."""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import replace

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pinrec.featurestore.schema import Vocabulary
from pinrec.featurestore.store import SequenceStore, apply
from pinrec.stream.consumer import ConsumerSettings, SequenceConsumer
from pinrec.stream.events import Event, EventLimits
from pinrec.stream.metrics import ConsumerMetrics

from .stream_helpers import (
    ConsumerProcess,
    applied_store_settings,
    make_events,
    reference_sequences,
    send,
    stored_sequences,
    wait_for_sequences,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("online_store", ["sqlite", "redis"])
def test_kill_minus_9_mid_stream_then_restart_loses_and_duplicates_nothing(
    online_store, services, make_topic, unique_name, tmp_path
):
    store = applied_store_settings(tmp_path, services, unique_name, online_store)
    topic = make_topic(3)
    events = make_events(20_000, users=400, seed=1)
    send(services.kafka_bootstrap, topic, events)

    first = ConsumerProcess(services.kafka_bootstrap, topic, store, topic, "--max-poll-records", "300")
    first.wait_consumed(3_000)
    first.kill()
    assert stored_sequences(store, sorted(reference_sequences(events))) != reference_sequences(events)

    second = ConsumerProcess(services.kafka_bootstrap, topic, store, topic)
    wait_for_sequences(store, reference_sequences(events), writer=second)
    assert second.terminate() == 0


def test_broker_restart_mid_stream_loses_nothing(services, make_topic, unique_name, tmp_path):
    store = applied_store_settings(tmp_path, services, unique_name, "redis")
    topic = make_topic(3)
    before, after = make_events(15_000, users=300, seed=2), make_events(3_000, users=300, seed=3)
    send(services.kafka_bootstrap, topic, before)
    consumer = ConsumerProcess(services.kafka_bootstrap, topic, store, topic, "--max-poll-records", "300")
    consumer.wait_consumed(2_000)
    services.stack.restart("kafka", pause_s=2)
    send(services.kafka_bootstrap, topic, after)
    wait_for_sequences(store, reference_sequences(before + after), writer=consumer)
    assert consumer.process.poll() is None, "the consumer must survive a broker restart"
    assert consumer.terminate() == 0


def test_two_consumers_in_one_group_share_the_partitions(services, make_topic, unique_name, tmp_path):
    store = applied_store_settings(tmp_path, services, unique_name, "redis")
    topic = make_topic(4)
    events = make_events(16_000, users=500, seed=4)
    consumers = [ConsumerProcess(services.kafka_bootstrap, topic, store, topic) for _ in range(2)]
    deadline = time.monotonic() + 60
    while sum(c.metric("pinrec_consumer_assigned_partitions") for c in consumers) < 4 or not all(
        c.metric("pinrec_consumer_assigned_partitions") for c in consumers
    ):
        assert time.monotonic() < deadline, "the group never spread the partitions over both consumers"
        time.sleep(0.5)
    send(services.kafka_bootstrap, topic, events)
    wait_for_sequences(store, reference_sequences(events))
    counts = [c.metric("pinrec_consumer_events_consumed_total") for c in consumers]
    assert sum(counts) >= len(events) and all(count > 0 for count in counts), counts
    assert [c.terminate() for c in consumers] == [0, 0]


def test_poison_messages_reach_the_dead_letter_topic_with_reasons(
    services, make_topic, unique_name, tmp_path
):
    store = applied_store_settings(tmp_path, services, unique_name, "sqlite")
    topic = make_topic(2)
    now = int(time.time() * 1000)
    good = [Event(f"g{i}", i % 5 + 1, 10 + i, "save", "home", now - i) for i in range(40)]
    base = json.loads(good[0].to_json())
    poison: list[tuple[bytes, bytes, str]] = [
        (b"1", b"{oops", "malformed_json"),
        (b"1", b"\x00\x9f binary", "malformed_json"),
        (b"1", json.dumps({**base, "event_id": "p1", "user_id": None}).encode(), "missing_field"),
        (
            b"1",
            json.dumps({k: v for k, v in base.items() if k != "item_id"} | {"event_id": "p2"}).encode(),
            "missing_field",
        ),
        (b"1", json.dumps({**base, "event_id": "p3", "item_id": "12"}).encode(), "wrong_type"),
        (b"1", json.dumps({**base, "event_id": "p4", "action": "like"}).encode(), "unknown_action"),
        (b"1", json.dumps({**base, "event_id": "p5", "surface": "tv"}).encode(), "unknown_surface"),
        (b"-4", json.dumps({**base, "event_id": "p6", "user_id": -4}).encode(), "out_of_range"),
        (b"1", json.dumps({**base, "event_id": "p7", "item_id": -9}).encode(), "out_of_range"),
        (b"1", json.dumps({**base, "event_id": "p8", "pad": "x" * 40_000}).encode(), "oversized"),
        (
            b"1",
            json.dumps({**base, "event_id": "p9", "ts_ms": now + 86_400_000}).encode(),
            "future_timestamp",
        ),
        (b"1", json.dumps({**base, "event_id": "p10", "ts_ms": 1_000}).encode(), "stale_timestamp"),
    ]
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    for i, event in enumerate(good):
        producer.send(topic, key=event.key, value=event.to_json())
        if i < len(poison):
            key, value, _ = poison[i]
            producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    consumer = ConsumerProcess(services.kafka_bootstrap, topic, store, topic)
    wait_for_sequences(store, reference_sequences(good), writer=consumer)
    dlq = KafkaConsumer(
        f"{topic}.dlq",
        bootstrap_servers=services.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
    )
    letters = [dict(message.headers) for message in dlq]
    dlq.close()
    assert sorted(h["error_code"].decode() for h in letters) == sorted(code for _, _, code in poison)
    assert all(h["reason"] and h["source_topic"].decode() == topic for h in letters)
    assert consumer.metric("pinrec_consumer_events_dead_lettered_total") == len(poison)
    assert consumer.process.poll() is None, "poison must never stop the consumer"
    assert consumer.terminate() == 0


def test_redis_down_for_seconds_mid_stream_loses_nothing(services, make_topic, unique_name, tmp_path):
    store = applied_store_settings(tmp_path, services, unique_name, "redis")
    topic = make_topic(3)
    before, during = make_events(5_000, users=300, seed=5), make_events(4_000, users=300, seed=6)
    send(services.kafka_bootstrap, topic, before)
    consumer = ConsumerProcess(services.kafka_bootstrap, topic, store, topic)
    wait_for_sequences(store, reference_sequences(before), writer=consumer)

    def trickle() -> None:  # events keep arriving while Redis is down
        for start in range(0, len(during), 400):
            send(services.kafka_bootstrap, topic, during[start : start + 400])
            time.sleep(0.8)

    sender = threading.Thread(target=trickle)
    sender.start()
    time.sleep(1)
    services.stack.restart("redis", pause_s=5)
    sender.join()
    wait_for_sequences(store, reference_sequences(before + during), writer=consumer)
    # The outage was felt: a write failed (and was retried by us), or blocked in the client's own retries.
    slow_writes = consumer.metric("pinrec_consumer_batch_seconds_count", stage="write") - consumer.metric(
        "pinrec_consumer_batch_seconds_bucket", stage="write", le="2.5"
    )
    assert consumer.metric("pinrec_consumer_store_errors_total") > 0 or slow_writes > 0
    assert consumer.terminate() == 0


def test_equal_event_times_and_rapid_updates_are_all_applied_on_redis(
    services, make_topic, unique_name, tmp_path
):
    store = applied_store_settings(tmp_path, services, unique_name, "redis")
    topic = make_topic(1)
    same_ms = int(time.time() * 1000)
    events = [Event(f"same-{i}", 42, 500 + i, "click", "search", same_ms) for i in range(30)]
    events += [Event(f"quick-{i}", 43, 900 + i, "save", "related", same_ms + i) for i in range(100)]
    send(services.kafka_bootstrap, topic, events)
    # One event per batch: every event is its own write of the user, many within one clock tick.
    settings = ConsumerSettings(services.kafka_bootstrap, topic, group_id=topic, max_poll_records=1)
    metrics = ConsumerMetrics()
    consumer = SequenceConsumer(settings, SequenceStore(apply(store)), Vocabulary(), EventLimits(), metrics)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    try:
        wait_for_sequences(store, reference_sequences(events), timeout_s=60)
    finally:
        stop.set()
        thread.join(30)
    assert metrics.value("pinrec_consumer_sequences_written_total") == len(events)


def test_sigterm_finishes_the_batch_and_commits(services, make_topic, unique_name, tmp_path):
    store = applied_store_settings(tmp_path, services, unique_name, "sqlite")
    topic = make_topic(2)
    events = make_events(5_000, users=100, seed=6, redelivered=0)
    send(services.kafka_bootstrap, topic, events)
    consumer = ConsumerProcess(services.kafka_bootstrap, topic, store, topic)
    wait_for_sequences(store, reference_sequences(events), writer=consumer)
    assert consumer.terminate() == 0
    reader = KafkaConsumer(
        bootstrap_servers=services.kafka_bootstrap, group_id=topic, enable_auto_commit=False
    )
    committed = [
        reader.committed(TopicPartition(topic, p)) for p in sorted(reader.partitions_for_topic(topic))
    ]
    reader.close()
    assert sum(committed) == len(events)


def test_a_hung_redis_counts_errors_and_sigterm_still_exits_within_30_s(
    private_redis, services, make_topic, unique_name, tmp_path
):
    """Redis stopped (SIGSTOP: the socket stays open, nothing answers): reads and writes time out and are
    counted as store errors, and SIGTERM ends the consumer within the README's 30 s."""
    redis_process, url = private_redis
    store = replace(applied_store_settings(tmp_path, services, unique_name, "redis"), redis_url=url)
    apply(store)
    topic = make_topic(1)
    events = make_events(400, users=20, seed=9, redelivered=0)
    send(services.kafka_bootstrap, topic, events[:200])
    consumer = ConsumerProcess(services.kafka_bootstrap, topic, store, topic)
    wait_for_sequences(store, reference_sequences(events[:200]), timeout_s=60, writer=consumer)
    redis_process.send_signal(signal.SIGSTOP)
    send(services.kafka_bootstrap, topic, events[200:])
    deadline = time.monotonic() + 60
    while consumer.metric("pinrec_consumer_store_errors_total") < 1:
        assert time.monotonic() < deadline, "the hung store's calls were never counted as errors"
        time.sleep(0.5)
    started = time.monotonic()
    assert consumer.terminate(timeout_s=45) == 0
    assert time.monotonic() - started <= 30
    redis_process.send_signal(signal.SIGCONT)
