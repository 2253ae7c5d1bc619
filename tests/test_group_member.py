"""A consumer-group member gets every partition it is assigned: at its first join right after the topic is
created, and when partitions are added while it polls. A real Kafka broker."""

from __future__ import annotations

import time

from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.admin import NewPartitions
from kafka.consumer.subscription_state import ConsumerRebalanceListener

from pinrec.stream.consumer import ConsumerSettings
from pinrec.stream.group_member import group_consumer


class Assignments(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.seen: list[set[int]] = []

    def on_partitions_revoked(self, revoked):
        pass

    def on_partitions_assigned(self, assigned):
        self.seen.append({partition.partition for partition in assigned})


def poll_until(consumer, done, timeout_ms: int, within_s: float = 15) -> list[bytes]:
    """Poll until done(consumer, the values received so far) is true."""
    received: list[bytes] = []
    deadline = time.monotonic() + within_s
    while not done(consumer, received):
        assert time.monotonic() < deadline, f"not done after {within_s} s; assigned {consumer.assignment()}"
        batch = consumer.poll(timeout_ms=timeout_ms)
        received += [record.value for records in batch.values() for record in records]
    return received


def assigned(consumer, _) -> bool:
    return bool(consumer.assignment())


def test_a_member_that_joins_as_the_topic_is_created_gets_its_partitions_in_its_first_assignment(
    services, make_topic
):
    """kafka-python may send its first JoinGroup before it knows the topic: an empty first assignment."""
    for _ in range(5):
        topic = make_topic(2)
        consumer = group_consumer(ConsumerSettings(services.kafka_bootstrap, topic, group_id=topic))
        listener = Assignments()
        consumer.subscribe([topic], listener=listener)
        try:
            poll_until(consumer, assigned, timeout_ms=100)
            assert listener.seen == [{0, 1}]
        finally:
            consumer.close(autocommit=False)


def test_partitions_added_while_the_member_polls_briefly_are_assigned_and_consumed(services, make_topic):
    """kafka-python drops a rejoin that finishes after poll's timeout: with 1 ms polls, always."""
    topic = make_topic(1)
    settings = ConsumerSettings(services.kafka_bootstrap, topic, group_id=topic, metadata_max_age_ms=500)
    consumer = group_consumer(settings)
    consumer.subscribe([topic])
    try:
        poll_until(consumer, assigned, timeout_ms=100)
        admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
        admin.create_partitions({topic: NewPartitions(total_count=3)})
        admin.close()
        producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap)
        producer.send(topic, value=b"in the new partition", partition=2).get(timeout=30)
        producer.close()

        poll_until(consumer, lambda _, received: b"in the new partition" in received, timeout_ms=1)
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(3)}
    finally:
        consumer.close(autocommit=False)
