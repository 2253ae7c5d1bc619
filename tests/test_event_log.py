"""The event-log sink against the real Kafka broker: each valid message logged once, partitioned by event
date, across `kill -9` and restarts and groups that never committed, in a local folder and in an S3 bucket (a
real S3 API server, moto_server); reading the log back for training, from s3:// under torchrun too; and
`pinrec backfill` rebuilding the consumer's sequences from it."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from kafka import KafkaProducer

from pinrec.featurestore.event_log import (
    DAY_MS,
    day_name,
    file_path,
    list_days,
    list_files,
    open_log,
    read_events,
    temp_path,
)
from pinrec.featurestore.schema import UserSequence, Vocabulary
from pinrec.featurestore.store import SequenceStore, open_store
from pinrec.localstack.processes import die_with_parent, wait_for_http
from pinrec.model.data.loaders import load_dataset
from pinrec.stream.backfill import backfill
from pinrec.stream.events import Event, EventLimits
from pinrec.stream.merge import merge_events
from pinrec.stream.sink import EventLogSink, SinkMetrics, SinkSettings

from .helpers import BIN, REPO, pinrec
from .serving_helpers import free_port
from .stream_helpers import (
    applied_store_settings,
    logged_metrics_port,
    make_events,
    reference_sequences,
    send,
    stored_sequences,
)

INVALID = [  # (key, value) pairs the sink must count and skip
    (b"1", b"{not json"),
    (
        b"2",
        b'{"event_id": "bad-action", "user_id": 2, "item_id": 1, "action": "teleport", '
        b'"surface": "home", "ts_ms": 1}',
    ),
    (b"3", Event("bad-key", 4, 1, "click", "home", int(time.time() * 1000)).to_json()),
    (None, Event("no-key", 5, 1, "click", "home", int(time.time() * 1000)).to_json()),
]


def spread_over_days(events: list[Event]) -> list[Event]:
    """Move a third of the events one day back and a third two days back (redelivered copies alike)."""
    return [dataclasses.replace(e, ts_ms=e.ts_ms - int(e.event_id[-1]) % 3 * DAY_MS) for e in events]


def send_invalid(bootstrap: str, topic: str) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value in INVALID:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def logged_rows(log: Path | str) -> collections.Counter:
    """Every row of the log (a folder or a URI) as written (no deduplication): event id -> times logged."""
    filesystem, base = open_log(str(log))
    if not list_days(filesystem, base):
        return collections.Counter()
    dataset = ds.dataset(base, filesystem=filesystem, format="parquet", partitioning="hive")
    return collections.Counter(dataset.to_table(columns=["event_id"])["event_id"].to_pylist())


def temporary_files(log: Path | str) -> list[str]:
    filesystem, base = open_log(str(log))
    return list_files(filesystem, base, list_days(filesystem, base))[1]


def run_sink(
    bootstrap: str, topic: str, log: Path | str, group: str, expected: int, **options
) -> SinkMetrics:
    """An in-process sink until it has logged or refused `expected` messages, then stopped."""
    metrics = SinkMetrics()
    settings = SinkSettings(bootstrap, topic, str(log), group_id=group, **{"flush_seconds": 0.5, **options})
    sink = EventLogSink(settings, Vocabulary(), EventLimits(), metrics)
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 90
    while (
        metrics.value("pinrec_sink_events_written_total") + metrics.value("pinrec_sink_invalid_events_total")
        < expected
    ):
        assert thread.is_alive() and time.monotonic() < deadline, "the sink stopped short"
        time.sleep(0.1)
    stop.set()
    thread.join(timeout=30)
    return metrics


def test_sink_logs_each_valid_message_once_partitioned_by_event_date(services, make_topic, tmp_path):
    topic = make_topic(3)
    events = spread_over_days(make_events(3_000, users=300, seed=1))
    send(services.kafka_bootstrap, topic, events)
    send_invalid(services.kafka_bootstrap, topic)
    log = tmp_path / "log"

    metrics = run_sink(
        services.kafka_bootstrap, topic, log, "g1", len(events) + len(INVALID), flush_events=400
    )

    assert logged_rows(log) == collections.Counter(e.event_id for e in events)
    assert metrics.value("pinrec_sink_invalid_events_total") == len(INVALID)
    days = {day_name(e.ts_ms // DAY_MS) for e in events}
    assert {p.name for p in log.iterdir()} == {f"date={day}" for day in days}
    for file in log.glob("date=*/*.parquet"):
        assert file.name.startswith("part-p")
        times = pq.read_table(file)["ts_ms"].to_pylist()
        assert {day_name(t // DAY_MS) for t in times} == {file.parent.name.removeprefix("date=")}
    assert not list(log.rglob(".*")), "temporary files left behind"
    distinct = {e.event_id: e for e in events}
    assert sorted(read_events(str(log))["event_id"].to_pylist()) == sorted(distinct)


class SinkProcess:
    """`pinrec sink` in its own process, tied to the test process's life."""

    def __init__(
        self, bootstrap: str, topic: str, log: Path | str, group: str, *extra: str, logs: Path | None = None
    ) -> None:
        """log: the event log (a folder or a URI); logs: the folder for the process's output (default: the
        event log's parent folder)."""
        self.output = (logs or Path(log).parent) / f"sink-{uuid.uuid4().hex[:8]}.log"
        self._metrics_port: int | None = None
        command = [sys.executable, "-m", "pinrec.cli", "sink", "--bootstrap", bootstrap, "--topic", topic]
        command += ["--out", str(log), "--group", group, "--metrics-port", "0", *extra]
        with open(self.output, "wb") as output:
            self.process = subprocess.Popen(
                command,
                env=dict(os.environ),
                cwd=REPO,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )

    def metric(self, name: str) -> float:
        self._metrics_port = self._metrics_port or logged_metrics_port(self.output)
        if self._metrics_port is None:
            return 0.0
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self._metrics_port}/metrics", timeout=2) as reply:
                text = reply.read().decode()
        except OSError:
            return 0.0
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    def wait_for(self, name: str, at_least: float, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while self.metric(name) < at_least:
            assert self.process.poll() is None, self.output.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{name} stayed below {at_least}"
            time.sleep(0.05)


S3_BUCKET = "pinrec-events"


@pytest.fixture(scope="module")
def s3_bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bucket on a real S3 API server (moto_server on a free port), with the AWS_* environment that points
    pyarrow, and every process started from here, at it; its s3:// URI."""
    port = free_port()
    output = tmp_path_factory.mktemp("s3") / "moto_server.log"
    with open(output, "wb") as log:
        server = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    endpoint = f"http://127.0.0.1:{port}"
    wait_for_http(endpoint, server, what="moto_server", timeout_s=60, log_path=output)
    environment = {
        "AWS_ACCESS_KEY_ID": "pinrec-test",
        "AWS_SECRET_ACCESS_KEY": "pinrec-test-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir(S3_BUCKET)
        yield f"s3://{S3_BUCKET}"
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(params=["folder", "s3"])
def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the sink writes: a local folder, or a prefix in an S3 bucket (where a move is a copy and a
    delete, not an atomic rename)."""
    if request.param == "s3":
        return f"{request.getfixturevalue('s3_bucket')}/{uuid.uuid4().hex[:8]}/log"
    return str(tmp_path / "log")


def test_sink_is_exactly_once_across_kill_9_restart_and_uncommitted_groups(
    services, make_topic, tmp_path, event_log
):
    topic = make_topic(3)
    first, second = make_events(20_000, 2_000, seed=2), make_events(5_000, 2_000, seed=3)
    send(services.kafka_bootstrap, topic, first)

    flush = ("--flush-events", "500", "--flush-seconds", "1")
    sink = SinkProcess(services.kafka_bootstrap, topic, event_log, "g", *flush, logs=tmp_path)
    sink.wait_for("pinrec_sink_files_written_total", 6)
    sink.process.send_signal(signal.SIGKILL)
    sink.process.wait()
    assert 0 < sum(logged_rows(event_log).values()) < len(first), "killed before or after the run"
    send(services.kafka_bootstrap, topic, second)
    filesystem, base = open_log(event_log)
    crashed = temp_path(file_path(base, list_days(filesystem, base)[0], 0, 0, 1), "crashed")
    with filesystem.open_output_stream(crashed) as half_a_file:
        half_a_file.write(b"half a file")

    sink = SinkProcess(services.kafka_bootstrap, topic, event_log, "g", *flush, logs=tmp_path)
    sent = collections.Counter(e.event_id for e in first + second)
    deadline = time.monotonic() + 90
    while sum(logged_rows(event_log).values()) < sum(sent.values()) and time.monotonic() < deadline:
        assert sink.process.poll() is None, sink.output.read_text()[-3000:]
        time.sleep(0.2)
    sink.process.send_signal(signal.SIGTERM)
    assert sink.process.wait(timeout=60) == 0, sink.output.read_text()[-3000:]
    assert logged_rows(event_log) == sent
    assert temporary_files(event_log) == [], "the crashed temporary file was not removed"

    # A group that never committed (as after a crash between every rename and its commit) resumes from the
    # log: it writes only the new events.
    late = make_events(30, 20, seed=4, redelivered=0)
    send(services.kafka_bootstrap, topic, late)
    metrics = run_sink(services.kafka_bootstrap, topic, event_log, "never-committed", len(late))
    assert metrics.value("pinrec_sink_events_written_total") == len(late)
    assert logged_rows(event_log) == sent + collections.Counter(e.event_id for e in late)


def test_training_under_torchrun_reads_the_sinks_log_from_s3(services, make_topic, tmp_path, s3_bucket):
    """`pinrec sink` writes to s3://, and two training processes read the log from there with the AWS_*
    credentials and endpoint of the environment."""
    topic = make_topic(2)
    events = make_events(3_000, 100, seed=10, redelivered=0)
    send(services.kafka_bootstrap, topic, events)
    uri = f"{s3_bucket}/{uuid.uuid4().hex[:8]}/log"
    run_sink(services.kafka_bootstrap, topic, uri, "g", len(events), flush_events=1_000)

    out = tmp_path / "model"
    model = ["--max-epochs", "1", "--dim", "32", "--data-shards", "2", "--device", "cpu"]
    pinrec("train", "--data", uri, "--out", out, *model, processes=2)
    manifest = json.loads((out / "manifest.json").read_text())
    training = manifest["metrics"]["training"]
    assert training["epochs"] == 1 and training["processes"] == 2 and training["backend"] == "gloo", training


def test_sink_rewrites_a_chunk_that_a_crash_left_without_all_its_dates(services, make_topic, tmp_path):
    topic = make_topic(1)
    log = tmp_path / "log"
    events = spread_over_days(make_events(600, 50, seed=5, redelivered=0))
    send(services.kafka_bootstrap, topic, events)
    run_sink(services.kafka_bootstrap, topic, log, "g", len(events), flush_seconds=3)
    files = sorted(log.glob("date=*/*.parquet"))
    assert len(files) == 3 and len({f.name for f in files}) == 1, "one chunk over three dates"
    files[0].unlink()  # the crash came after the other renames, before this one and before the commit

    metrics = run_sink(services.kafka_bootstrap, topic, log, "fresh", len(events))
    assert metrics.value("pinrec_sink_events_written_total") == len(events)
    assert logged_rows(log) == collections.Counter(e.event_id for e in events)


def test_backfill_rebuilds_the_consumers_sequences_and_is_idempotent(
    services, make_topic, tmp_path, unique_name
):
    topic = make_topic(3)
    events = spread_over_days(make_events(4_000, 200, seed=6))
    send(services.kafka_bootstrap, topic, events)
    log = tmp_path / "log"
    run_sink(services.kafka_bootstrap, topic, log, "g", len(events))
    settings = applied_store_settings(tmp_path, services, unique_name, "sqlite")
    store = SequenceStore(open_store(settings))
    expected = reference_sequences(events)

    report = backfill(str(log), store, Vocabulary(), cap=200, progress=False)
    assert report.written == len(expected) and report.conflicts == 0
    assert stored_sequences(settings, sorted(expected)) == expected
    assert backfill(str(log), store, Vocabulary(), cap=200, progress=False).written == 0


class CompetingWriter:
    """The real store, with another writer changing one user between the backfill's read and its write."""

    def __init__(self, store: SequenceStore, user_id: int, extra: Event) -> None:
        self.store, self.user_id, self.extra = store, user_id, extra

    def read(self, user_ids):
        return self.store.read(user_ids)

    def write_if_unchanged(self, sequences, expected):
        if self.extra is not None:
            stored = self.store.read([self.user_id]).get(self.user_id, UserSequence(self.user_id))
            merged, _ = merge_events(stored, [self.extra], Vocabulary(), 200, int(time.time() * 1e6))
            assert self.store.write_if_unchanged([merged], {self.user_id: stored.version_us}) == []
            self.extra = None
        return self.store.write_if_unchanged(sequences, expected)


def test_backfill_retries_users_another_writer_changed(services, make_topic, tmp_path, unique_name):
    topic = make_topic(1)
    events = make_events(300, 10, seed=7, redelivered=0)
    send(services.kafka_bootstrap, topic, events)
    log = tmp_path / "log"
    run_sink(services.kafka_bootstrap, topic, log, "g", len(events))
    settings = applied_store_settings(tmp_path, services, unique_name, "sqlite")
    store = SequenceStore(open_store(settings))
    user = events[0].user_id
    extra = Event("consumer-wrote-this", user, 999_999, "save", "home", int(time.time() * 1000))

    report = backfill(str(log), CompetingWriter(store, user, extra), Vocabulary(), cap=200, progress=False)

    assert report.conflicts >= 1
    expected = reference_sequences([*events, extra])
    assert stored_sequences(settings, sorted(expected)) == expected


def test_a_sink_folder_loads_as_a_training_dataset(services, make_topic, tmp_path):
    topic = make_topic(3)
    events = spread_over_days(make_events(1_000, 100, seed=8))
    send(services.kafka_bootstrap, topic, events)
    log = tmp_path / "log"
    run_sink(services.kafka_bootstrap, topic, log, "g", len(events))

    loaded = load_dataset(log)

    distinct = {e.event_id: e for e in events}
    assert len(loaded.events) == len(distinct)
    rows = loaded.events.set_index("event_id")
    for event in list(distinct.values())[:50]:
        row = rows.loc[event.event_id]
        assert (row.user_id, row.item_id, row.action, row.surface, row.ts_ms) == (
            event.user_id,
            event.item_id,
            event.action,
            event.surface,
            event.ts_ms,
        )
    assert loaded.item_ids is None and loaded.num_items == len({e.item_id for e in distinct.values()})
