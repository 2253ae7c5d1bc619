"""Helpers for the stream tests: event sets with late and redelivered events, the reference sequences
computed from the whole log, and a consumer running as its own process."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from kafka import KafkaProducer

from pinrec.featurestore.definitions import SEQUENCE_FIELDS, USER_ACTIVITY_VIEW
from pinrec.featurestore.schema import Vocabulary, event_key
from pinrec.featurestore.store import FeatureStoreSettings, apply, open_store
from pinrec.localstack.processes import die_with_parent, pick_port
from pinrec.stream.events import Event

from .helpers import REPO

Sequences = dict[int, tuple[tuple[int, ...], tuple[int, ...]]]  # user -> (item ids, event times)


def make_events(count: int, users: int, seed: int, redelivered: float = 0.02) -> list[Event]:
    """Events of the last ten minutes in shuffled time order (late events), some sent twice."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    vocabulary = Vocabulary()
    events = [
        Event(
            f"s{seed}-{i}",
            rng.randint(1, users),
            rng.randint(1, 5_000),
            rng.choice(vocabulary.actions),
            rng.choice(vocabulary.surfaces),
            now_ms - rng.randint(0, 600_000),
        )
        for i in range(count)
    ]
    return events + rng.sample(events, int(count * redelivered))


def send(bootstrap: str, topic: str, events: list[Event]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for event in events:
        producer.send(topic, key=event.key, value=event.to_json())
    producer.flush()
    producer.close()


def reference_sequences(events: list[Event], cap: int = 200) -> Sequences:
    """What the store must hold after all events: per user, the newest `cap` distinct engagements."""
    unique = {e.event_id: e for e in events if e.action not in Vocabulary().unsequenced_actions}
    per_user: dict[int, list[Event]] = defaultdict(list)
    for e in unique.values():
        per_user[e.user_id].append(e)
    result = {}
    for user, user_events in per_user.items():
        kept = sorted(user_events, key=lambda e: (e.ts_ms, event_key(e.event_id)))[-cap:]
        result[user] = (tuple(e.item_id for e in kept), tuple(e.ts_ms for e in kept))
    return result


def applied_store_settings(
    tmp_path: Path, services, unique_name: str, online_store: str
) -> FeatureStoreSettings:
    """A feature repository of this test's own, applied, on the session's Redis or a private SQLite file;
    the Feast project (the Redis key namespace) is unique to the test."""
    settings = FeatureStoreSettings(
        repo_dir=tmp_path / "repo",
        online_store=online_store,
        redis_url=services.redis_url,
        project="t" + unique_name.replace("-", "_").lower()[-40:],
    )
    apply(settings)
    return settings


def stored_sequences(settings: FeatureStoreSettings, users: list[int]) -> Sequences:
    """What any Feast client reads: through the public get_online_features, not the consumer's own path."""
    features = [f"{USER_ACTIVITY_VIEW}:{name}" for name in (*SEQUENCE_FIELDS, "version_us")]
    rows = (
        open_store(settings)
        .get_online_features(features=features, entity_rows=[{"user_id": u} for u in users])
        .to_dict()
    )
    return {
        user: (tuple(rows["item_ids"][i]), tuple(rows["event_times_ms"][i]))
        for i, user in enumerate(rows["user_id"])
        if rows["version_us"][i] is not None
    }


def wait_for_sequences(settings: FeatureStoreSettings, expected: Sequences, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    users = sorted(expected)
    while True:
        actual = stored_sequences(settings, users)
        if actual == expected:
            return
        if time.monotonic() > deadline:
            wrong = [u for u in users if actual.get(u) != expected[u]]
            raise AssertionError(
                f"{len(wrong)} of {len(users)} users differ from the reference, e.g. {wrong[:5]}"
            )
        time.sleep(1)


class ConsumerProcess:
    """`pinrec consume` in its own process, tied to the test process's life."""

    def __init__(
        self, bootstrap: str, topic: str, store: FeatureStoreSettings, group: str, *extra: str
    ) -> None:
        self.metrics_port = pick_port(0)
        self.log = Path(store.repo_dir) / f"consumer-{self.metrics_port}.log"
        env_store = {
            "PINREC_FEATURE_REPO": str(store.repo_dir),
            "PINREC_ONLINE_STORE": store.online_store,
            "PINREC_FEAST_PROJECT": store.project,
            **({"PINREC_REDIS_URL": store.redis_url} if store.redis_url else {}),
        }
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pinrec.cli",
                    "consume",
                    "--bootstrap",
                    bootstrap,
                    "--topic",
                    topic,
                    "--group",
                    group,
                    "--metrics-port",
                    str(self.metrics_port),
                    *extra,
                ],
                env={**os.environ, **env_store},
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples over the series that carry all the given labels (0 when unreachable)."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        total = 0.0
        for series, value in re.findall(rf"^({name}(?:{{[^}}]*}})?) ([0-9.e+-]+)$", text, re.MULTILINE):
            if all(f'{key}="{wanted}"' in series for key, wanted in labels.items()):
                total += float(value)
        return total

    def wait_consumed(self, at_least: float, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.metric("pinrec_consumer_events_consumed_total") < at_least:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"consumed fewer than {at_least} events in {timeout_s} s"
            time.sleep(0.2)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout_s: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)
