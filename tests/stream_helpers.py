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
import uuid
from collections import defaultdict
from pathlib import Path

from kafka import KafkaProducer

from pinrec.featurestore.definitions import SEQUENCE_FIELDS, USER_ACTIVITY_VIEW
from pinrec.featurestore.schema import Vocabulary, event_key
from pinrec.featurestore.store import FeatureStoreSettings, apply, open_store
from pinrec.localstack.processes import die_with_parent
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
    """Send and confirm every event: a failed delivery raises here, not as missing data later."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    sent = [producer.send(topic, key=event.key, value=event.to_json()) for event in events]
    producer.flush()
    producer.close()
    for delivery in sent:
        delivery.get(timeout=0)


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


def wait_for_sequences(
    settings: FeatureStoreSettings,
    expected: Sequences,
    timeout_s: float = 120,
    writer: ConsumerProcess | None = None,
) -> None:
    """Wait until the store holds the expected sequences; a failure shows the writer's log, if given."""
    deadline = time.monotonic() + timeout_s
    users = sorted(expected)
    while True:
        actual = stored_sequences(settings, users)
        if actual == expected:
            return
        if writer is not None:
            assert writer.process.poll() is None, f"the consumer exited: {writer.report()}"
        if time.monotonic() > deadline:
            wrong = [u for u in users if actual.get(u) != expected[u]]
            raise AssertionError(
                f"{len(wrong)} of {len(users)} users differ from the reference after {timeout_s:.0f} s, "
                f"e.g. {wrong[:5]}" + (f"; the consumer: {writer.report()}" if writer else "")
            )
        time.sleep(1)


def logged_metrics_port(log: Path) -> int | None:
    """The port of /metrics that a `pinrec` process started with --metrics-port 0 logged, once it has."""
    found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log.read_text(errors="replace"))
    return int(found.group(1)) if found else None


class ConsumerProcess:
    """`pinrec consume` in its own process, tied to the test process's life."""

    def __init__(
        self, bootstrap: str, topic: str, store: FeatureStoreSettings, group: str, *extra: str
    ) -> None:
        self.log = Path(store.repo_dir) / f"consumer-{uuid.uuid4().hex[:8]}.log"
        self._metrics_port: int | None = None
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
                    "0",  # any free port, read from the log: a port picked here could be taken before use
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
        self._metrics_port = self._metrics_port or logged_metrics_port(self.log)
        if self._metrics_port is None:
            return 0.0
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self._metrics_port}/metrics", timeout=2
            ) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        total = 0.0
        for series, value in re.findall(rf"^({name}(?:{{[^}}]*}})?) ([0-9.e+-]+)$", text, re.MULTILINE):
            if all(f'{key}="{wanted}"' in series for key, wanted in labels.items()):
                total += float(value)
        return total

    def report(self) -> str:
        """Its exit status and the end of its log."""
        status = "running" if self.process.poll() is None else f"exit status {self.process.returncode}"
        return f"{status}; log {self.log}:\n{self.log.read_text()[-3000:]}"

    def wait_consumed(self, at_least: float, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.metric("pinrec_consumer_events_consumed_total") < at_least:
            assert self.process.poll() is None, self.report()
            assert time.monotonic() < deadline, f"consumed fewer than {at_least} events in {timeout_s} s"
            time.sleep(0.2)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout_s: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)
