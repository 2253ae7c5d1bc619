"""Kafka topic administration: is the broker up, create topics with their partition counts."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping, Sequence

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

from pinrec.stream.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)


def _accepts_connections(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def broker_ready(bootstrap: str, timeout_ms: int = 2000, security: KafkaSecurity = PLAINTEXT) -> bool:
    """True when the broker answers a cluster metadata request."""
    # A plain TCP probe first: kafka-python logs every refused connection at ERROR level.
    if not _accepts_connections(bootstrap):
        return False
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
            **security.client_options(),
        )
    except KafkaError:
        return False
    try:
        return bool(admin.describe_cluster().get("brokers"))
    except KafkaError:
        return False
    finally:
        admin.close()


def ensure_topics(
    bootstrap: str,
    partitions: Mapping[str, int],
    replication_factor: int = 1,
    security: KafkaSecurity = PLAINTEXT,
    ready_timeout_s: float = 30.0,
) -> None:
    """Create each topic with its partition count (existing topics are left as they are), then wait until
    every partition of every topic has a leader: a consumer that joins its group before that is assigned
    nothing and only notices the partitions at its next metadata refresh."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **security.client_options())
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(name, count, replication_factor)
            for name, count in partitions.items()
            if name not in existing
        ]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                log.debug("topic created concurrently: %s", [topic.name for topic in new])
        _wait_for_leaders(admin, list(partitions), ready_timeout_s)
    finally:
        admin.close()


def _without_leader(admin: KafkaAdminClient, names: list[str]) -> list[str]:
    """The topics that are unknown to the broker or have a partition without a leader."""
    described = {topic["name"]: topic for topic in admin.describe_topics(names)}
    return [
        name
        for name in names
        if name not in described
        or described[name]["error_code"] != 0
        or not described[name]["partitions"]
        or any(part["error_code"] != 0 or part["leader_id"] < 0 for part in described[name]["partitions"])
    ]


def _wait_for_leaders(admin: KafkaAdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while pending := _without_leader(admin, names):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"topics {pending} have partitions without a leader after {timeout_s:.0f} s: "
                "check that the brokers are up and can reach each other"
            )
        time.sleep(0.1)


def delete_topics(bootstrap: str, names: Sequence[str], security: KafkaSecurity = PLAINTEXT) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **security.client_options())
    try:
        admin.delete_topics(list(names))
    except UnknownTopicOrPartitionError:
        pass
    finally:
        admin.close()
