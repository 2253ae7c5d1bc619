"""Session fixtures: one real local stack (Kafka, Redis, Prometheus) per test session, on free ports, tied
to the pytest process so that even a killed test run leaves nothing behind; per-test topics and keys."""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

from pinrec.localstack.processes import die_with_parent, pick_port
from pinrec.localstack.stack import LocalStack
from pinrec.stream.topics import delete_topics, ensure_topics

from .helpers import free_port_settings


@dataclass(frozen=True)
class Services:
    stack: LocalStack
    kafka_bootstrap: str
    redis_url: str
    prometheus_url: str


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    stack = LocalStack(free_port_settings(tmp_path_factory.mktemp("stack")), bound_to_parent=True)
    try:
        stack.up({"redis": True, "prometheus": True})
        report = stack.status()
        yield Services(
            stack, report["kafka"]["bootstrap"], report["redis"]["url"], report["prometheus"]["url"]
        )
    finally:
        stack.down(purge=True)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name no other test uses: the test's own name plus a random suffix."""
    return f"{re.sub(r'[^A-Za-z0-9]+', '-', request.node.name)[:60]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_topic(services: Services, unique_name: str) -> Iterator[Callable[[int], str]]:
    """Create this test's own topics; they are deleted afterwards."""
    created: list[str] = []

    def make(partitions: int = 3) -> str:
        topic = f"test.{unique_name}.{len(created)}"
        ensure_topics(services.kafka_bootstrap, {topic: partitions})
        created.append(topic)
        return topic

    yield make
    if created:
        delete_topics(services.kafka_bootstrap, created)


@pytest.fixture
def redis_keys(services: Services, unique_name: str) -> Iterator[tuple[redis.Redis, str]]:
    """A Redis client and a key prefix owned by this test; its keys are deleted afterwards."""
    client = redis.Redis.from_url(services.redis_url)
    prefix = f"test:{unique_name}:"
    yield client, prefix
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def private_redis() -> Iterator[tuple[subprocess.Popen, str]]:
    """A redis-server of this test's own, to stop and resume; it dies with the test process."""
    port = pick_port(0)
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "the private redis-server did not start"
            time.sleep(0.1)
    client.close()
    try:
        yield process, url
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait()
