"""The fault phases of `pinrec bench stream`: exactly-once of the event-log sink across `kill -9`, and a
fault run whose final online store must equal the expected sequences exactly.

Fault run: three `pinrec consume` processes share a topic and a `pinrec sink` logs it; the third consumer is
stalled (SIGSTOP) past its session while the others go on; keyless events arrive (dead-lettered); partitions
are added while producers with old and new metadata send one user to different partitions; Redis is
flushed mid-run; the stalled consumer resumes; `pinrec backfill` rebuilds from the event log while the
consumers run. Every process is a real one on the real broker and store.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.dataset as ds
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewPartitions
from kafka.structs import TopicPartition

from pinrec.bench.scrape import scrape, total
from pinrec.featurestore.schema import UserSequence, Vocabulary
from pinrec.featurestore.store import FeatureStoreSettings, SequenceStore, apply
from pinrec.localstack.processes import pick_port, spawn, wait_for_http, wait_until
from pinrec.server_process import terminate
from pinrec.stream.backfill import backfill
from pinrec.stream.events import Event
from pinrec.stream.merge import merge_events
from pinrec.stream.topics import ensure_topics
from pinrec.stream.workload import zipf_user_stream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultBenchConfig:
    users: int = 1_000
    events_per_phase: int = 10_000
    keyless_events: int = 300
    cap: int = 200
    stall_s: float = 15.0  # longer than the consumers' session timeout (10 s): the group moves on


class _Process:
    """A `pinrec` subcommand in its own process with its /metrics on a free port."""

    def __init__(self, arguments: list[str], workdir: Path, name: str, env: dict[str, str]) -> None:
        self.port = pick_port(0)
        self.log_path = workdir / f"{name}.log"
        command = [sys.executable, "-m", "pinrec.cli", *arguments, "--metrics-port", str(self.port)]
        self.process = spawn(command, self.log_path, bound_to_parent=True, env=env)
        wait_for_http(self.url, self.process, what=name, timeout_s=120, log_path=self.log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def metric(self, name: str) -> float:
        """The sum of a metric's series."""
        return total(scrape(self.url).get(name, []))

    def stop(self) -> None:
        terminate(self.process, 30)


def _send(bootstrap: str, topic: str, events: list[Event], partition_of=None, keyed: bool = True) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for index, event in enumerate(events):
        partition = partition_of(index, event) if partition_of else None
        producer.send(topic, key=event.key if keyed else None, value=event.to_json(), partition=partition)
    producer.flush()
    producer.close()


def _events(config: FaultBenchConfig, seed: int, count: int) -> list[Event]:
    """Zipf-distributed users' events of the last ten minutes, in shuffled time order."""
    now_ms = int(time.time() * 1000)
    events = zipf_user_stream(config.users, count, Vocabulary(), seed=seed)
    return [replace(event, ts_ms=now_ms - (i * 7_919) % 600_000) for i, event in enumerate(events)]


def _caught_up(bootstrap: str, topic: str, groups: list[str]) -> bool:
    """Every group has committed the end of every partition that holds messages."""
    probe = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in probe.partitions_for_topic(topic) or ()]
        ends = {tp: end for tp, end in probe.end_offsets(partitions).items() if end}
    finally:
        probe.close()
    for group in groups:
        reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        try:
            if any((reader.committed(tp) or 0) < end for tp, end in ends.items()):
                return False
        finally:
            reader.close(autocommit=False)
    return bool(ends)


def sink_exactly_once(bootstrap: str, workdir: Path, env: dict[str, str], config: FaultBenchConfig) -> dict:
    """`kill -9` of the sink while it writes, a restart, then: rows in the log = distinct events sent."""
    topic = f"bench.sink-kill.{time.monotonic_ns()}"
    ensure_topics(bootstrap, {topic: 2, f"{topic}.dlq": 1})
    events = _events(config, seed=21, count=3 * config.events_per_phase)
    _send(bootstrap, topic, events)
    out = workdir / "kill9-log"
    arguments = ["sink", "--bootstrap", bootstrap, "--topic", topic, "--out", str(out)]
    arguments += ["--group", topic, "--flush-events", "2000", "--flush-seconds", "1"]
    first = _Process(arguments, workdir, "sink-1", env)
    wait_until(
        lambda: first.metric("pinrec_sink_files_written_total") >= 2,
        what="the sink's first files",
        timeout_s=120,
    )
    first.process.send_signal(signal.SIGKILL)  # mid-run: buffers and possibly a temp file are lost
    first.process.wait()
    written_before = sum(1 for _ in out.rglob("*.parquet"))
    second = _Process(arguments, workdir, "sink-2", env)
    try:
        wait_until(
            lambda: _caught_up(bootstrap, topic, [topic]),
            what="the restarted sink to catch up",
            timeout_s=300,
        )
    finally:
        second.stop()
    rows = ds.dataset(out, format="parquet", partitioning="hive").to_table(columns=["event_id"])
    distinct_sent = len({event.event_id for event in events})
    return {
        "sink_kill9_files_before_kill": written_before,
        "sink_kill9_rows_in_log": rows.num_rows,
        "sink_kill9_distinct_rows_in_log": len(set(rows["event_id"].to_pylist())),
        "sink_kill9_distinct_events_sent": distinct_sent,
        "sink_kill9_exactly_once": rows.num_rows == distinct_sent
        and len(set(rows["event_id"].to_pylist())) == distinct_sent,
    }


def fault_run(
    bootstrap: str, redis_url: str, workdir: Path, env: dict[str, str], config: FaultBenchConfig
) -> dict:
    topic = f"bench.faults.{time.monotonic_ns()}"
    group = f"{topic}.sequences"
    ensure_topics(bootstrap, {topic: 3, f"{topic}.dlq": 1})
    settings = FeatureStoreSettings(workdir / "faults-repo", "redis", redis_url, project="faults")
    store = SequenceStore(apply(settings))
    log_uri = str(workdir / "faults-log")
    env = {**env, "PINREC_FEATURE_REPO": str(settings.repo_dir), "PINREC_ONLINE_STORE": "redis"}
    env |= {"PINREC_REDIS_URL": redis_url, "PINREC_FEAST_PROJECT": "faults"}
    common = ["--bootstrap", bootstrap, "--topic", topic]
    consume = ["consume", *common]
    sink_group = f"{topic}.sink"
    sink_arguments = ["sink", *common, "--out", log_uri, "--group", sink_group, "--flush-seconds", "1"]
    sink = _Process(sink_arguments, workdir, "faults-sink", env)
    consumers = [
        _Process([*consume, "--group", group, "--max-poll-records", "500"], workdir, f"consumer-{i}", env)
        for i in range(3)
    ]
    keyed: list[Event] = []
    try:
        wait_until(
            lambda: all(c.metric("pinrec_consumer_assigned_partitions") >= 1 for c in consumers),
            what="every consumer to own a partition",
            timeout_s=120,
        )
        first = _events(config, seed=31, count=config.events_per_phase)
        _send(bootstrap, topic, first[: len(first) // 2])
        stalled = consumers[2]
        wait_until(
            lambda: stalled.metric("pinrec_consumer_events_consumed_total") > 0,
            what="consumer 3 to work",
            timeout_s=60,
        )
        log.info("stalling consumer 3 for %.0f s while its partition keeps receiving events", config.stall_s)
        stalled.process.send_signal(signal.SIGSTOP)
        _send(bootstrap, topic, first[len(first) // 2 :])
        keyed += first
        _send(bootstrap, topic, _events(config, seed=32, count=config.keyless_events), keyed=False)
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_partitions({topic: NewPartitions(total_count=6)})
        admin.close()
        second = _events(config, seed=33, count=config.events_per_phase)

        def old_or_new_metadata(index: int, event: Event) -> int:
            return zlib.crc32(event.key) % (3 if index % 2 else 6)

        _send(bootstrap, topic, second[: len(second) // 2], old_or_new_metadata)
        log.info("flushing Redis mid-run")
        redis.Redis.from_url(redis_url).flushdb()
        _send(bootstrap, topic, second[len(second) // 2 :], old_or_new_metadata)
        keyed += second
        time.sleep(max(0.0, config.stall_s - 5))
        stalled.process.send_signal(signal.SIGCONT)
        third = _events(config, seed=34, count=config.events_per_phase)
        _send(bootstrap, topic, third)
        keyed += third
        wait_until(
            lambda: _caught_up(bootstrap, topic, [sink_group, group]),
            what="the sink and the consumers",
            timeout_s=600,
        )
        log.info("backfill from the event log while the consumers run")
        report = backfill(log_uri, store, Vocabulary(), config.cap, progress=False)
        conflicts = sum(c.metric("pinrec_consumer_write_conflicts_total") for c in consumers)
    finally:
        for process in (*consumers, sink):
            process.process.send_signal(signal.SIGCONT)
            process.stop()
    return _compare(store, keyed, config.cap) | {
        "fault_write_conflicts": int(conflicts + report.conflicts),
        "fault_backfill_written": report.written,
    }


def _compare(store: SequenceStore, events: list[Event], cap: int) -> dict:
    per_user: dict[int, list[Event]] = defaultdict(list)
    for event in events:
        per_user[event.user_id].append(event)
    expected = {
        user: merge_events(UserSequence(user), user_events, Vocabulary(), cap, 1)[0]
        for user, user_events in per_user.items()
    }
    expected = {user: sequence for user, sequence in expected.items() if len(sequence)}
    stored = store.read(sorted(expected))
    found = 0
    equal = 0
    for user, sequence in expected.items():
        actual = stored.get(user)
        if actual is None:
            continue
        found += len(set(actual.event_keys) & set(sequence.event_keys))
        same = (actual.item_ids, actual.event_times_ms, actual.event_keys)
        equal += same == (sequence.item_ids, sequence.event_times_ms, sequence.event_keys)
    events_expected = sum(len(sequence) for sequence in expected.values())
    return {
        "fault_users_checked": len(expected),
        "fault_users_equal": equal,
        "fault_events_expected": events_expected,
        "fault_events_found": found,
        "fault_store_exact": equal == len(expected),
    }
