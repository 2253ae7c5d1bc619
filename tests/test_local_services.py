"""The real services of the session stack work end to end: Kafka, Redis and a Prometheus scrape."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections import defaultdict

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from pinrec.localstack.processes import pick_port
from pinrec.stream.topics import delete_topics, ensure_topics

pytestmark = pytest.mark.integration


def test_kafka_round_trip_delivers_every_event_once_in_order_per_user(services, make_topic):
    topic = make_topic(3)
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    sent = [{"user_id": i % 7, "seq": i} for i in range(300)]
    for event in sent:
        producer.send(topic, key=str(event["user_id"]).encode(), value=json.dumps(event).encode())
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=services.kafka_bootstrap,
        group_id=topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    received, partitions_per_user = [], defaultdict(set)
    deadline = time.monotonic() + 60
    while len(received) < len(sent) and time.monotonic() < deadline:
        for partition, messages in consumer.poll(timeout_ms=500).items():
            for message in messages:
                event = json.loads(message.value)
                received.append(event)
                partitions_per_user[event["user_id"]].add(partition.partition)
    consumer.commit()
    consumer.close()

    assert sorted(e["seq"] for e in received) == list(range(300))
    for user in range(7):
        seqs = [e["seq"] for e in received if e["user_id"] == user]
        assert seqs == sorted(seqs), f"user {user} events out of order"
        assert len(partitions_per_user[user]) == 1, "a user's events must stay on one partition"


def test_redis_round_trip(redis_keys):
    client, prefix = redis_keys
    client.set(prefix + "sequence", b"\x01\x02\x03")
    client.hset(prefix + "user", mapping={"items": "1,2,3", "ts": "17"})
    assert client.get(prefix + "sequence") == b"\x01\x02\x03"
    assert client.hgetall(prefix + "user") == {b"items": b"1,2,3", b"ts": b"17"}


def _query(prometheus_url: str, promql: str) -> list[dict]:
    url = f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)["data"]["result"]


def test_prometheus_scrapes_a_metric_exposed_by_this_process(services, unique_name):
    registry = CollectorRegistry()
    gauge = Gauge("pinrec_test_scrape_marker", "A value only this test sets", ["test"], registry=registry)
    gauge.labels(test=unique_name).set(42.5)
    port = pick_port(0)
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        services.stack.register_scrape_target(unique_name, f"127.0.0.1:{port}")
        promql = f'pinrec_test_scrape_marker{{test="{unique_name}"}}'
        deadline = time.monotonic() + 30
        result: list[dict] = []
        while not result and time.monotonic() < deadline:
            result = _query(services.prometheus_url, promql)
            time.sleep(0.5)
        assert result, "Prometheus never scraped the test process"
        assert float(result[0]["value"][1]) == 42.5
        assert result[0]["metric"]["pinrec_job"] == unique_name
    finally:
        server.shutdown()


def test_ensure_topics_returns_when_every_partition_has_a_leader(services, unique_name):
    """A consumer group that forms right after ensure_topics sees every partition: the group's leader
    assigns from its metadata, and a topic it does not yet know would leave the members idle."""
    topics = {f"test.{unique_name}.a": 4, f"test.{unique_name}.b": 1}
    ensure_topics(services.kafka_bootstrap, topics)
    try:
        admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
        described = {topic["name"]: topic for topic in admin.describe_topics(list(topics))}
        admin.close()
        for name, count in topics.items():
            assert sorted(p["partition_index"] for p in described[name]["partitions"]) == list(range(count))
            assert all(p["leader_id"] >= 0 for p in described[name]["partitions"])
    finally:
        delete_topics(services.kafka_bootstrap, list(topics))
