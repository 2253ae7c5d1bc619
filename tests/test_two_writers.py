"""Two writers of one user's sequence lose nothing: every write is conditional on the stored version the
writer merged into, and a conflict is read and merged again. Real Kafka, real Redis and SQLite stores."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewPartitions

from pinrec.featurestore.schema import UserSequence, Vocabulary
from pinrec.featurestore.store import FeatureStoreSettings, SequenceStore, open_store
from pinrec.stream.consumer import ConsumerSettings, SequenceConsumer
from pinrec.stream.events import Event, EventLimits
from pinrec.stream.merge import merge_events
from pinrec.stream.metrics import ConsumerMetrics
from pinrec.stream.topics import ensure_topics

from .stream_helpers import applied_store_settings, make_events, reference_sequences, wait_for_sequences

STORES = ["sqlite", "redis"]


@contextmanager
def running(
    settings: ConsumerSettings, sink, metrics: ConsumerMetrics | None = None
) -> Iterator[SequenceConsumer]:
    """A SequenceConsumer on its own thread until the block ends."""
    consumer = SequenceConsumer(settings, sink, Vocabulary(), EventLimits(), metrics or ConsumerMetrics())
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        stop.set()
        thread.join(60)


def send_to(bootstrap: str, topic: str, events: list[Event], partition_of) -> None:
    """Send each event, keyed by its user, to the partition partition_of(index, event) chooses: what
    producers with different partition counts (or different partitioners) do to one user."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for index, event in enumerate(events):
        producer.send(topic, key=event.key, value=event.to_json(), partition=partition_of(index, event))
    producer.flush()
    producer.close()


def consumer_settings(bootstrap: str, topic: str, **overrides) -> ConsumerSettings:
    return ConsumerSettings(bootstrap, topic, group_id=topic, max_poll_records=50, **overrides)


@pytest.mark.parametrize("online_store", STORES)
def test_one_user_on_two_partitions_of_two_consumers_loses_nothing(
    online_store, services, make_topic, unique_name, tmp_path
):
    """Every user's events alternate between the two partitions, each owned by its own consumer: two
    writers for every user, many small batches so that their read-merge-write cycles interleave."""
    store = applied_store_settings(tmp_path, services, unique_name, online_store)
    topic = make_topic(2)
    events = make_events(3_000, users=20, seed=11, redelivered=0.05)
    first, second = ConsumerMetrics(), ConsumerMetrics()
    settings = consumer_settings(services.kafka_bootstrap, topic)
    with (
        running(settings, SequenceStore(open_store(store)), first),
        running(settings, SequenceStore(open_store(store)), second),
    ):
        time.sleep(3)  # both join the group before the events arrive, so each gets a partition
        send_to(services.kafka_bootstrap, topic, events, lambda index, _: index % 2)
        wait_for_sequences(store, reference_sequences(events), timeout_s=120)
    conflicts = sum(m.value("pinrec_consumer_write_conflicts_total") for m in (first, second))
    print(f"{online_store}: {conflicts:.0f} conflicting writes were read and merged again")


@pytest.mark.parametrize("online_store", STORES)
def test_partitions_added_while_running_lose_nothing(
    online_store, services, make_topic, unique_name, tmp_path
):
    """A producer with old metadata keeps sending a user to partition 0 while a new one sends them to the
    partition that was just added; both consumers write the user."""
    store = applied_store_settings(tmp_path, services, unique_name, online_store)
    topic = make_topic(1)
    events = make_events(2_000, users=15, seed=12, redelivered=0)
    before, after = events[:500], events[500:]
    settings = consumer_settings(services.kafka_bootstrap, topic, metadata_max_age_ms=1_000)
    with (
        running(settings, SequenceStore(open_store(store))),
        running(settings, SequenceStore(open_store(store))) as second,
    ):
        send_to(services.kafka_bootstrap, topic, before, lambda *_: 0)
        admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
        admin.create_partitions({topic: NewPartitions(total_count=2)})
        admin.close()
        deadline = time.monotonic() + 60
        while not second.consumer.assignment() and time.monotonic() < deadline:
            time.sleep(0.5)  # the group rebalances once the consumers see the new partition
        send_to(services.kafka_bootstrap, topic, after, lambda index, _: index % 2)
        wait_for_sequences(store, reference_sequences(events), timeout_s=120)


class StallingSink:
    """The real store, but the first write waits until released: a consumer stalled between its read and
    its write (a long GC pause, SIGSTOP, a store outage past its session) while another writer goes on."""

    def __init__(self, store: SequenceStore) -> None:
        self.store = store
        self.stalled = threading.Event()
        self.release = threading.Event()

    def read(self, user_ids: list[int]) -> dict[int, UserSequence]:
        return self.store.read(user_ids)

    def write_if_unchanged(self, sequences, expected) -> list[int]:
        if not self.stalled.is_set():
            self.stalled.set()
            self.release.wait(60)
        return self.store.write_if_unchanged(sequences, expected)


@pytest.mark.parametrize("online_store", STORES)
def test_a_writer_stalled_between_read_and_write_does_not_overwrite_newer_events(
    online_store, services, make_topic, unique_name, tmp_path
):
    store = applied_store_settings(tmp_path, services, unique_name, online_store)
    topic = make_topic(1)
    now_ms = int(time.time() * 1000)
    stalled_events = [Event(f"a{i}", 7, 100 + i, "save", "home", now_ms - 1_000 + i) for i in range(3)]
    other_events = [Event(f"b{i}", 7, 200 + i, "click", "search", now_ms - 500 + i) for i in range(3)]
    sink = StallingSink(SequenceStore(open_store(store)))
    metrics = ConsumerMetrics()
    with running(consumer_settings(services.kafka_bootstrap, topic), sink, metrics):
        send_to(services.kafka_bootstrap, topic, stalled_events, lambda *_: 0)
        assert sink.stalled.wait(60), "the consumer never reached its write"
        # Meanwhile another writer (another consumer, a backfill) writes the user's newer events.
        other = SequenceStore(open_store(store))
        stored = other.read([7]).get(7, UserSequence(7))
        merged, _ = merge_events(stored, other_events, Vocabulary(), 200, int(time.time() * 1_000_000))
        assert other.write_if_unchanged([merged], {7: stored.version_us}) == []
        sink.release.set()
        wait_for_sequences(store, reference_sequences(stalled_events + other_events), timeout_s=60)
    assert metrics.value("pinrec_consumer_write_conflicts_total") >= 1


def test_keyless_events_are_dead_lettered_not_applied(services, make_topic, unique_name, tmp_path):
    """A null key lets one user's events land on any partition (several writers): refused as a key
    mismatch, with the reason in the dead letter."""
    store: FeatureStoreSettings = applied_store_settings(tmp_path, services, unique_name, "sqlite")
    topic = make_topic(2)
    ensure_topics(services.kafka_bootstrap, {f"{topic}.dlq": 1})
    events = make_events(12, users=2, seed=13, redelivered=0)
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    for event in events:
        producer.send(topic, key=None, value=event.to_json())
    producer.flush()
    producer.close()
    metrics = ConsumerMetrics()
    with running(
        consumer_settings(services.kafka_bootstrap, topic), SequenceStore(open_store(store)), metrics
    ):
        deadline = time.monotonic() + 60
        while metrics.value("pinrec_consumer_events_dead_lettered_total", reason="key_mismatch") < len(
            events
        ):
            assert time.monotonic() < deadline, "the keyless events were not all dead-lettered"
            time.sleep(0.5)
    assert SequenceStore(open_store(store)).read([1, 2]) == {}
