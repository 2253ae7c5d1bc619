"""Dead letters: always sendable, whatever the refused record looks like, and never lost while the
dead-letter topic is unavailable. The integration tests run the consumer against the real broker and the
SQLite Feast store."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.serializer import Serializer

from pinrec.featurestore.schema import Vocabulary
from pinrec.featurestore.store import FeatureStoreSettings, SequenceStore, apply
from pinrec.stream.consumer import ConsumerSettings, SequenceConsumer
from pinrec.stream.dead_letters import DeadLetter
from pinrec.stream.events import Event, EventLimits, InvalidEvent
from pinrec.stream.metrics import ConsumerMetrics
from pinrec.stream.topics import delete_topics, ensure_topics

from .stream_helpers import applied_store_settings, reference_sequences, wait_for_sequences

LIMIT = EventLimits().max_bytes
NULL = object()  # a key that kafka-python serialises to a null key


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode()


# --- the letter itself ------------------------------------------------------------------------------


def test_a_record_with_neither_key_nor_value_becomes_empty_bytes_with_null_sizes():
    letter = DeadLetter.of(TopicPartition("t", 2), 9, None, None, InvalidEvent("empty", "no value"), LIMIT)
    assert (letter.key, letter.value) == (b"", b"")
    assert dict(letter.headers) == {
        "reason": b"no value",
        "error_code": b"empty",
        "source_topic": b"t",
        "source_partition": b"2",
        "source_offset": b"9",
        "original_key_bytes": b"null",
        "original_value_bytes": b"null",
        "original_key_sha256": b"",
        "original_value_sha256": b"",
    }


def test_an_oversized_key_is_cut_to_the_event_limit_and_keeps_its_size_and_digest():
    key, value = b"k" * 1_000_000, b"{}"
    error = InvalidEvent("key_mismatch", "message key is not the user_id")
    letter = DeadLetter.of(TopicPartition("t", 0), 1, key, value, error, LIMIT)
    headers = dict(letter.headers)
    assert (letter.key, letter.value) == (key[:LIMIT], value)
    assert headers["original_key_bytes"] == b"1000000" and headers["original_key_sha256"] == sha256(key)
    assert headers["original_value_bytes"] == b"2" and headers["original_value_sha256"] == sha256(value)
    assert headers["truncated"] == b"true"


# --- against the broker ------------------------------------------------------------------------------


class _NullMarker(Serializer):
    """Sends NULL as a null key. kafka-python refuses a record with neither key nor value before it
    serialises, but Kafka accepts one and other clients (Java, librdkafka) send it."""

    def serialize(self, topic, headers, data):
        return None if data is NULL else data


def run_consumer(
    services, topic: str, store: FeatureStoreSettings
) -> tuple[SequenceConsumer, ConsumerMetrics, threading.Event, threading.Thread]:
    settings = ConsumerSettings(services.kafka_bootstrap, topic, group_id=topic, stop_grace_s=5)
    metrics = ConsumerMetrics()
    consumer = SequenceConsumer(settings, SequenceStore(apply(store)), Vocabulary(), EventLimits(), metrics)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    return consumer, metrics, stop, thread


def committed(bootstrap: str, topic: str) -> int | None:
    """The consumer group's committed offset of the topic's only partition."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=topic, enable_auto_commit=False)
    try:
        return reader.committed(TopicPartition(topic, 0))
    finally:
        reader.close()


def wait_committed(bootstrap: str, topic: str, offset: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while committed(bootstrap, topic) != offset:
        assert time.monotonic() < deadline, f"offset {offset} of {topic} not committed in {timeout_s} s"
        time.sleep(0.5)


def dead_letters(bootstrap: str, dlq: str) -> list:
    reader = KafkaConsumer(
        dlq,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5_000,
    )
    try:
        return list(reader)
    finally:
        reader.close()


@pytest.fixture
def dlq_cleanup(services) -> Iterator[list[str]]:
    """Dead-letter topics the test creates; deleted afterwards (make_topic deletes only its own)."""
    names: list[str] = []
    yield names
    if names:
        delete_topics(services.kafka_bootstrap, names)


def good_events(prefix: str, count: int, now_ms: int) -> list[Event]:
    return [
        Event(f"{prefix}{i}", i % 4 + 1, 100 + i, "save", "home", now_ms - 1_000 + i) for i in range(count)
    ]


@pytest.mark.integration
def test_keyless_empty_and_1_mb_key_records_are_dead_lettered_and_the_partition_moves_on(
    services, make_topic, unique_name, tmp_path, dlq_cleanup
):
    bootstrap = services.kafka_bootstrap
    store = applied_store_settings(tmp_path, services, unique_name, "sqlite")
    topic = make_topic(1)
    dlq = f"{topic}.dlq"
    ensure_topics(bootstrap, {dlq: 1})
    dlq_cleanup.append(dlq)
    now_ms = int(time.time() * 1000)
    good = good_events("g", 30, now_ms)
    huge_key = b"9" * 1_000_000  # its letter keeps the first EventLimits.max_bytes
    poison = {  # offset -> (key, value, expected error code)
        10: (NULL, None, "empty"),
        21: (huge_key, good[0].to_json(), "key_mismatch"),
        31: (NULL, good[1].to_json(), "key_mismatch"),  # valid event, but without its user's key
    }
    records = [(event.key, event.to_json()) for event in good]
    for offset, (key, value, _) in sorted(poison.items()):
        records.insert(offset, (key, value))
    producer = KafkaProducer(bootstrap_servers=bootstrap, key_serializer=_NullMarker(), acks="all")
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    _, metrics, stop, thread = run_consumer(services, topic, store)
    try:
        wait_for_sequences(store, reference_sequences(good), timeout_s=60)
        wait_committed(bootstrap, topic, len(records))
    finally:
        stop.set()
        thread.join(30)

    letters = {int(dict(m.headers)["source_offset"]): m for m in dead_letters(bootstrap, dlq)}
    assert sorted(letters) == sorted(poison)
    for source_offset, (key, value, code) in poison.items():
        letter, headers = letters[source_offset], dict(letters[source_offset].headers)
        assert headers["error_code"].decode() == code and headers["source_topic"].decode() == topic
        for part, original, sent in (("key", key, letter.key), ("value", value, letter.value)):
            if original is NULL or original is None:
                assert sent == b"" and headers[f"original_{part}_bytes"] == b"null"
            else:
                assert sent == original[:LIMIT]
                assert headers[f"original_{part}_bytes"] == str(len(original)).encode()
                assert headers[f"original_{part}_sha256"] == sha256(original)
    assert b"null" in dict(letters[31].headers)["reason"]
    assert dict(letters[21].headers)["truncated"] == b"true"
    assert metrics.value("pinrec_consumer_events_dead_lettered_total", reason="key_mismatch") == 2
    assert metrics.value("pinrec_consumer_events_dead_lettered_total", reason="empty") == 1


def _create_refusing_topic(bootstrap: str, dlq: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        topic = {"num_partitions": 1, "replication_factor": 1, "configs": {"max.message.bytes": "100"}}
        admin.create_topics({dlq: topic}, wait_for_metadata=True)
    finally:
        admin.close()


def _lift_message_limit(bootstrap: str, dlq: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, dlq, configs={"max.message.bytes": "1048588"})]
        )
    finally:
        admin.close()


def _no_topic(bootstrap: str, dlq: str) -> None:
    return None


DLQ_OUTAGES = {  # name -> (make the dead-letter topic refuse letters, end that)
    "missing": (_no_topic, lambda bootstrap, dlq: ensure_topics(bootstrap, {dlq: 1})),
    "refusing": (_create_refusing_topic, _lift_message_limit),
}


@pytest.mark.integration
@pytest.mark.parametrize("outage", sorted(DLQ_OUTAGES))
def test_a_dead_letter_is_held_until_its_topic_takes_it_and_nothing_is_committed_meanwhile(
    outage, services, make_topic, unique_name, tmp_path, dlq_cleanup
):
    """Two ways a letter fails, each ended while the consumer runs:
    - missing: the local broker runs with auto.create.topics.enable=false (pinrec/localstack/services.py),
      so the dead-letter topic does not exist until the test creates it; send() fails after the producer's
      bounded wait for the topic's metadata. Before, the consumer waited 121 s in flush, dropped the
      letter and committed.
    - refusing: the topic exists with max.message.bytes=100; send() returns and the broker's refusal shows
      only in the send's result, which flush checks. The limit is then raised.
    Meanwhile the flush fails and is retried, and nothing is committed; afterwards the letter is in the
    topic exactly once and the batch is committed."""
    bootstrap = services.kafka_bootstrap
    store = applied_store_settings(tmp_path, services, unique_name, "sqlite")
    topic = make_topic(1)
    dlq = f"{topic}.dlq"
    dlq_cleanup.append(dlq)
    break_topic, mend_topic = DLQ_OUTAGES[outage]
    break_topic(bootstrap, dlq)
    good = good_events("m", 20, int(time.time() * 1000))
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i, event in enumerate(good):
        producer.send(topic, key=event.key, value=event.to_json())
        if i == 9:
            producer.send(topic, key=b"1", value=b"{oops")  # offset 10
    producer.flush()
    producer.close()

    _, metrics, stop, thread = run_consumer(services, topic, store)
    try:
        deadline = time.monotonic() + 60
        while metrics.value("pinrec_consumer_store_errors_total") < 2:  # two failed flushes
            assert time.monotonic() < deadline, "the dead letter never failed to send"
            time.sleep(0.5)
        assert committed(bootstrap, topic) is None
        assert metrics.value("pinrec_consumer_events_dead_lettered_total", reason="malformed_json") == 0

        mend_topic(bootstrap, dlq)
        wait_committed(bootstrap, topic, len(good) + 1)
        wait_for_sequences(store, reference_sequences(good), timeout_s=30)
    finally:
        stop.set()
        thread.join(30)

    letters = dead_letters(bootstrap, dlq)
    assert [(dict(m.headers)["source_offset"], m.value) for m in letters] == [(b"10", b"{oops")]
    assert metrics.value("pinrec_consumer_events_dead_lettered_total", reason="malformed_json") == 1
