"""The event-log sink: every valid event of a topic, impressions included, written once to the Parquet event
log (layout in featurestore/event_log.py), in its own consumer group.

Exactly once, without transactions: a file's name carries the partition and the first and last offsets it
holds, it is written under a temporary name and renamed, and only then is the offset after it committed. On
start and after every rebalance or failure a partition resumes from max(committed offset, last offset in the
log + 1), so a crash between a rename and its commit writes nothing twice. A chunk whose events span several
dates becomes one file per date; they are all written before any is renamed, and a chunk that a crash left
with some of its dates missing (the footer of each file lists them all) is deleted and written again. Only
a partition's newest chunk can be in that state: chunks are renamed in offset order. Temporary files a crash
left behind are deleted.

Events are validated with the sequence consumer's parse_event and vocabulary; invalid ones are counted and
skipped here (the sequence consumer dead-letters them).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from kafka import TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter

from pinrec.featurestore.event_log import (
    CHUNK_DATES_KEY,
    DAY_MS,
    LogFile,
    day_name,
    event_days,
    file_path,
    list_days,
    list_files,
    open_log,
    temp_partition,
    temp_path,
)
from pinrec.featurestore.schema import EVENT_LOG_SCHEMA, Vocabulary
from pinrec.stream.events import Event, EventLimits, InvalidEvent, parse_event
from pinrec.stream.group_member import group_consumer
from pinrec.stream.metrics import sample_total
from pinrec.stream.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinkSettings:
    bootstrap: str
    topic: str
    out: str  # the event log's URI: a local path, file://, s3://, gs://...
    group_id: str = "pinrec-event-log"
    flush_events: int = 100_000  # a partition's buffer becomes a file (one per date) at this many events
    flush_seconds: float = 60.0  # ... or when its first event has waited this long
    max_poll_records: int = 20_000
    poll_timeout_ms: int = 100
    retry_initial_s: float = 0.2  # first backoff after a failed write or commit
    retry_max_s: float = 5.0
    metadata_max_age_ms: int = 30_000  # partitions added to the topic are logged within this time
    security: KafkaSecurity = PLAINTEXT

    def validate(self) -> None:
        if self.flush_events < 1:
            raise ValueError(f"--flush-events must be at least 1, got {self.flush_events}")
        if self.flush_seconds <= 0:
            raise ValueError(f"--flush-seconds must be positive, got {self.flush_seconds}")


@dataclass
class SinkMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.written = Counter(
            "pinrec_sink_events_written_total", "Events written to the Parquet event log", registry=r
        )
        self.files = Counter(
            "pinrec_sink_files_written_total", "Parquet files added to the event log", registry=r
        )
        self.invalid = Counter(
            "pinrec_sink_invalid_events_total",
            "Messages that failed validation and were not logged (counted again if re-read after a crash)",
            ["reason"],  # InvalidEvent codes
            registry=r,
        )

    def value(self, name: str) -> float:
        """The sum of a metric's samples over its labels, e.g. value("pinrec_sink_events_written_total")."""
        return sample_total(self.registry, name)


@dataclass
class _Chunk:
    """Buffered events of one partition, offsets first..last (invalid messages included)."""

    first: int
    last: int
    started: float  # monotonic time of its first message
    events: list[Event] = field(default_factory=list)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sink: EventLogSink) -> None:
        self.sink = sink

    def on_partitions_revoked(self, revoked):
        # The next owner resumes from the log and the commits; what is buffered here is read again there.
        self.sink.forget(revoked)
        self.sink.pending.difference_update(revoked)

    def on_partitions_assigned(self, assigned):
        self.sink.pending.update(assigned)


class EventLogSink:
    def __init__(
        self,
        settings: SinkSettings,
        vocabulary: Vocabulary,
        limits: EventLimits,
        metrics: SinkMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings.validate()
        self.settings = settings
        self.vocabulary = vocabulary
        self.limits = limits
        self.metrics = metrics
        self.clock = clock
        self.filesystem, self.base = open_log(settings.out)
        self.filesystem.create_dir(self.base, recursive=True)
        self.open: dict[TopicPartition, _Chunk] = {}  # per partition, the chunk being filled
        self.full: list[tuple[TopicPartition, _Chunk]] = []  # chunks that reached flush_events, in order
        self.pending: set[TopicPartition] = set()  # partitions to resume before using their records
        self.consumer = group_consumer(settings)
        self.consumer.subscribe([settings.topic], listener=_Rebalance(self))

    # --- the loop -----------------------------------------------------------------------------------

    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> None:
        """Log events until stop is set or no message came for idle_exit_s seconds; then write what is
        buffered, commit and close."""
        last_message = time.monotonic()
        backoff = self.settings.retry_initial_s
        try:
            while not stop.is_set():
                try:
                    batch = self.consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
                    if self.pending:
                        resumed = set(self.pending)
                        self.resume(resumed)
                        batch = {tp: records for tp, records in batch.items() if tp not in resumed}
                    if batch:
                        last_message = time.monotonic()
                        self.add(batch)
                    elif idle_exit_s is not None and time.monotonic() - last_message > idle_exit_s:
                        break
                    self.flush(force=False)
                    backoff = self.settings.retry_initial_s
                except Exception:  # filesystem and client errors differ by backend; all are retried
                    log.exception("writing the event log failed; resuming the partitions from the log")
                    self.forget(self.consumer.assignment())
                    self.pending.update(self.consumer.assignment())
                    time.sleep(backoff)
                    backoff = min(backoff * 2, self.settings.retry_max_s)
            if not self.pending:
                self._final_flush()
        finally:
            self.consumer.close(autocommit=False)

    def _final_flush(self) -> None:
        try:
            self.flush(force=True)
        except Exception:
            log.exception("could not write the buffered events; the next start reads them again")

    def add(self, batch: dict) -> None:
        now_ms = int(self.clock() * 1000)
        limit = self.settings.flush_events
        for partition, records in batch.items():
            chunk = self.open.get(partition)
            for record in records:
                if chunk is None:
                    chunk = self.open[partition] = _Chunk(record.offset, record.offset, time.monotonic())
                chunk.last = record.offset
                try:
                    chunk.events.append(
                        parse_event(record.value, record.key, self.vocabulary, self.limits, now_ms)
                    )
                except InvalidEvent as error:
                    self.metrics.invalid.labels(error.code).inc()
                    continue
                if len(chunk.events) >= limit:
                    self.full.append((partition, self.open.pop(partition)))
                    chunk = None

    def flush(self, force: bool) -> None:
        """Write the full chunks, then the open ones that are due (all of them when forced), each followed
        by the commit of the offset after it."""
        now = time.monotonic()
        due = [
            (partition, chunk)
            for partition, chunk in self.open.items()
            if force or now - chunk.started >= self.settings.flush_seconds
        ]
        for partition, chunk in [*self.full, *due]:  # a failure here makes run() forget and resume all
            self._write(partition.partition, chunk)
            self._commit(partition, chunk.last + 1)
        self.full.clear()
        for partition, _ in due:
            del self.open[partition]

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = set(partitions)
        for partition in partitions:
            self.open.pop(partition, None)
        self.full = [(p, c) for p, c in self.full if p not in partitions]

    # --- files --------------------------------------------------------------------------------------

    def _write(self, partition: int, chunk: _Chunk) -> None:
        if not chunk.events:  # only invalid messages: nothing to log, the commit alone moves on
            return
        table = _table(chunk.events)
        days = event_days(table["ts_ms"].to_numpy())
        day_numbers = np.unique(days)
        names = [day_name(d) for d in day_numbers]
        metadata = {CHUNK_DATES_KEY: ",".join(names).encode()}
        token = uuid.uuid4().hex[:12]
        written = []
        # Every date's file first, then the renames: a crash leaves temporary files, or a short rename run.
        for day_number, name in zip(day_numbers, names, strict=True):
            final = file_path(self.base, name, partition, chunk.first, chunk.last)
            temp = temp_path(final, token)
            self.filesystem.create_dir(final.rpartition("/")[0], recursive=True)
            part = table if len(day_numbers) == 1 else table.filter(pa.array(days == day_number))
            part = part.replace_schema_metadata(metadata)
            pq.write_table(part, temp, filesystem=self.filesystem)
            written.append((temp, final))
        for temp, final in written:
            self.filesystem.move(temp, final)
        self.metrics.written.inc(len(chunk.events))
        self.metrics.files.inc(len(written))

    def _commit(self, partition: TopicPartition, offset: int) -> None:
        try:
            self.consumer.commit({partition: OffsetAndMetadata(offset, "", -1)})
        except CommitFailedError:
            log.warning("commit refused after a rebalance; the next owner resumes from the log")
        except KafkaError as error:
            log.warning("commit failed (%s); the next start resumes from the log", error)

    def resume(self, partitions: set[TopicPartition]) -> None:
        """Seek each partition to max(committed offset, the offset after the last one the log holds)."""
        self.forget(partitions)
        logged = self._next_offsets({tp.partition for tp in partitions if tp.topic == self.settings.topic})
        for tp in partitions:
            known = [o for o in (self.consumer.committed(tp), logged.get(tp.partition)) if o is not None]
            if known:
                self.consumer.seek(tp, max(known))
            else:
                self.consumer.seek_to_beginning(tp)
            log.info("partition %d resumes at offset %s", tp.partition, max(known) if known else "0")
        self.pending -= partitions

    def _next_offsets(self, partitions: set[int]) -> dict[int, int]:
        """Per partition, the offset after the newest complete chunk in the log; an incomplete newest chunk
        and the partitions' temporary files are deleted on the way."""
        files, temps = list_files(self.filesystem, self.base, self._recent_days())
        for temp in temps:
            if temp_partition(temp) in partitions:
                self.filesystem.delete_file(temp)
        chunks: dict[tuple[int, int, int], list[LogFile]] = {}
        for file in files:
            if file.partition in partitions:
                chunks.setdefault((file.partition, file.first, file.last), []).append(file)
        newest: dict[int, tuple[int, int, int]] = {}
        for key in chunks:
            if key[0] not in newest or key[2] > newest[key[0]][2]:
                newest[key[0]] = key
        offsets = {}
        for partition, key in newest.items():
            group = chunks[key]
            dates = pq.read_schema(group[0].path, filesystem=self.filesystem).metadata[CHUNK_DATES_KEY]
            if set(dates.decode().split(",")) <= {file.day for file in group}:
                offsets[partition] = key[2] + 1
            else:
                log.warning("partition %d: offsets %d-%d were cut short by a crash; rewriting them", *key)
                for file in group:
                    self.filesystem.delete_file(file.path)
                offsets[partition] = key[1]
        return offsets

    def _recent_days(self) -> list[str]:
        """The date folders that can hold a partition's newest chunk: events older than the limits' maximum
        age are refused, so its dates lie within that age (plus clock skew) of the newest folder."""
        days = list_days(self.filesystem, self.base)
        if not days:
            return []
        window = timedelta(days=self.limits.max_age_ms // DAY_MS + 2)
        oldest = (date.fromisoformat(days[-1]) - window).isoformat()
        return [day for day in days if day >= oldest]


def _table(events: list[Event]) -> pa.Table:
    """Events as EVENT_LOG_SCHEMA rows; the Kafka contract has no session id."""
    return pa.table(
        {
            "event_id": [e.event_id for e in events],
            "user_id": [e.user_id for e in events],
            "item_id": [e.item_id for e in events],
            "action": [e.action for e in events],
            "surface": [e.surface for e in events],
            "ts_ms": [e.ts_ms for e in events],
            "query_id": [e.query_id for e in events],
            "subject_item_id": [e.subject_item_id for e in events],
            "session_id": pa.nulls(len(events), pa.int64()),
        },
        schema=EVENT_LOG_SCHEMA,
    )
