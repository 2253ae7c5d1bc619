"""The stream consumer: keeps users' activity sequences in the online store.

One loop: poll a batch, validate every message (invalid ones go to `<topic>.dlq` with the reason in a
header), merge each user's new events into their stored sequence (one read and one write per user per
batch), write on the condition that the stored row is still the one merged into (another writer's row is
read and merged again), flush the dead letters, and only then commit the offsets. A failure anywhere before
the commit rewinds to the batch's first offsets, so the batch is processed again; merging is idempotent, so
nothing is lost or applied twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
from kafka import TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError

from pinrec.featurestore.schema import UserSequence, Vocabulary
from pinrec.stream.dead_letters import DeadLetters
from pinrec.stream.events import Event, EventLimits, InvalidEvent, parse_event
from pinrec.stream.group_member import group_consumer
from pinrec.stream.metrics import ConsumerMetrics
from pinrec.stream.security import PLAINTEXT, KafkaSecurity
from pinrec.stream.writes import merge_all, write_merged

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ConsumerSettings:
    bootstrap: str
    topic: str
    group_id: str = "pinrec-sequences"
    sequence_cap: int = 200  # entries kept per user, newest last
    # The largest batch: one read and one write per user per batch, so bigger batches coalesce more events.
    max_poll_records: int = 20_000
    poll_timeout_ms: int = 100
    cache_users: int = (
        200_000  # sequences kept in memory for the assigned partitions (a stale one only costs a conflict)
    )
    retry_initial_s: float = 0.2  # first backoff when the store or the broker fails
    retry_max_s: float = 5.0
    # After SIGTERM, how long a failing store call of the current batch is retried. A call to a hung Redis
    # takes up to two 5 s socket timeouts: the call in flight, this grace and one last call end within the
    # 30 s Kubernetes grants before SIGKILL.
    stop_grace_s: float = 5.0
    lag_interval_s: float = 2.0
    metadata_max_age_ms: int = 30_000  # partitions added to the topic are consumed within this time
    security: KafkaSecurity = PLAINTEXT  # how the clients authenticate to the brokers

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"


class SequenceSink(Protocol):
    """Where sequences are read from and written to."""

    def read(self, user_ids: list[int]) -> dict[int, UserSequence]: ...

    def write_if_unchanged(self, sequences: list[UserSequence], expected: Mapping[int, int]) -> list[int]:
        """Write each sequence only if its stored version is still expected[user_id] (0: no row); the users
        whose row changed meanwhile (not written)."""
        ...


class NullSink:
    """Reads nothing and writes nothing: the floor the benchmark compares against."""

    def read(self, user_ids: list[int]) -> dict[int, UserSequence]:
        return {}

    def write_if_unchanged(self, sequences: list[UserSequence], expected: Mapping[int, int]) -> list[int]:
        return []


class StopRequested(Exception):
    """The stop grace period ran out while the batch was still failing; it will be redelivered."""


class _ClearCacheOnRebalance(ConsumerRebalanceListener):
    def __init__(self, cache: OrderedDict, metrics: ConsumerMetrics) -> None:
        self.cache = cache
        self.metrics = metrics

    def on_partitions_revoked(self, revoked):
        # Called inside poll(), between batches: everything processed so far is already committed.
        self.cache.clear()

    def on_partitions_assigned(self, assigned):
        # Another consumer may have written these users while the partitions were elsewhere.
        self.cache.clear()
        self.metrics.assigned_partitions.set(len(assigned))
        log.info("assigned partitions %s", sorted(partition.partition for partition in assigned))


class SequenceConsumer:
    def __init__(
        self,
        settings: ConsumerSettings,
        sink: SequenceSink,
        vocabulary: Vocabulary,
        limits: EventLimits,
        metrics: ConsumerMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.vocabulary = vocabulary
        self.limits = limits
        self.metrics = metrics
        self.clock = clock
        self.cache: OrderedDict[int, UserSequence] = OrderedDict()
        self.consumer = group_consumer(settings)
        self.consumer.subscribe([settings.topic], listener=_ClearCacheOnRebalance(self.cache, metrics))
        self.dlq = DeadLetters(
            settings.bootstrap,
            settings.dlq_topic,
            limits.max_bytes,
            metrics.dead_lettered,
            settings.security.client_options(),
        )
        self._stop_deadline: float | None = None
        self._next_lag_check = 0.0

    # --- the loop -----------------------------------------------------------------------------------

    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> None:
        """Process batches until stop is set (then finish the batch and commit), or until no message
        arrived for idle_exit_s seconds when that is given."""
        last_message = time.monotonic()
        try:
            while not stop.is_set():
                batch = self.consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
                if batch:
                    last_message = time.monotonic()
                    self._process_or_rewind(batch, stop)
                elif idle_exit_s is not None and time.monotonic() - last_message > idle_exit_s:
                    break
                self._update_lag()
        except StopRequested:
            log.warning("stopped with the current batch uncommitted; it will be processed again")
        finally:
            self.close()

    def close(self) -> None:
        self.dlq.close(timeout=10)
        self.consumer.close(autocommit=False)

    def _process_or_rewind(self, batch: dict, stop: threading.Event) -> None:
        try:
            self.process_batch(batch, stop)
        except StopRequested:
            raise
        except Exception:
            log.exception("batch failed before its commit; rewinding to process it again")
            self.cache.clear()
            for partition, records in batch.items():
                self.consumer.seek(partition, records[0].offset)
            time.sleep(self.settings.retry_initial_s)

    def process_batch(self, batch: dict, stop: threading.Event) -> None:
        timer = self.metrics.batch_seconds
        started = time.perf_counter()
        now_ms = int(self.clock() * 1000)
        with timer.labels("parse").time():
            events = self._validate(batch, now_ms)
        by_user: dict[int, list[Event]] = defaultdict(list)
        for event in events:
            by_user[event.user_id].append(event)

        with timer.labels("read").time():
            stored = self._stored(list(by_user), stop)
        cap, now_us = self.settings.sequence_cap, lambda: int(self.clock() * 1_000_000)
        with timer.labels("merge").time():
            merged = merge_all(by_user, stored, self.vocabulary, cap, now_us())
        with timer.labels("write").time():
            # A conflicting write is read and merged again here.
            written = write_merged(
                self.sink,
                by_user,
                stored,
                merged,
                self.vocabulary,
                cap,
                now_us,
                lambda action: self._retry(action, "read or write sequences", stop),
            )
            self._retry(self.dlq.flush, "flush dead letters", stop)
        changed, applied = written.sequences, written.applied
        self.metrics.write_conflicts.inc(written.conflicts)
        written_at_ms = self.clock() * 1000
        self._remember(changed)
        with timer.labels("commit").time():
            self._commit()
        timer.labels("total").observe(time.perf_counter() - started)

        unsequenced = sum(1 for e in events if e.action in self.vocabulary.unsequenced_actions)
        self.metrics.consumed.inc(sum(len(records) for records in batch.values()))
        self.metrics.applied.inc(applied)
        self.metrics.skipped.labels("unsequenced_action").inc(unsequenced)
        self.metrics.skipped.labels("duplicate").inc(len(events) - unsequenced - applied)
        self.metrics.written.inc(len(changed))
        event_times_ms = [event.ts_ms for sequence in changed for event in by_user[sequence.user_id]]
        freshness_ms = written_at_ms - np.asarray(event_times_ms, dtype=np.float64)
        self.metrics.observe_freshness(np.maximum(freshness_ms, 0.0) / 1000)

    # --- steps --------------------------------------------------------------------------------------

    def _validate(self, batch: dict, now_ms: int) -> list[Event]:
        events = []
        for partition, records in batch.items():
            for record in records:
                try:
                    events.append(parse_event(record.value, record.key, self.vocabulary, self.limits, now_ms))
                except InvalidEvent as error:
                    self._dead_letter(partition, record, error)
        return events

    def _dead_letter(self, partition: TopicPartition, record, error: InvalidEvent) -> None:
        # Counted when delivered; the flush before the commit raises while any letter is undelivered.
        self.dlq.send(partition, record, error)

    def _stored(self, user_ids: list[int], stop: threading.Event) -> dict[int, UserSequence]:
        missing = [u for u in user_ids if u not in self.cache]
        found = self._retry(lambda: self.sink.read(missing), "read sequences", stop) if missing else {}
        stored = {}
        for user_id in user_ids:
            sequence = self.cache.get(user_id)
            if sequence is None:
                sequence = found.get(user_id, UserSequence(user_id))
            stored[user_id] = sequence
        return stored

    def _remember(self, sequences: Iterable[UserSequence]) -> None:
        for sequence in sequences:
            self.cache[sequence.user_id] = sequence
            self.cache.move_to_end(sequence.user_id)
        while len(self.cache) > self.settings.cache_users:
            self.cache.popitem(last=False)

    def _commit(self) -> None:
        try:
            self.consumer.commit()
        except CommitFailedError:
            # The group rebalanced; the new owner reprocesses from the last commit (idempotently).
            log.warning("commit refused after a rebalance; the batch will be redelivered")
            self.cache.clear()
        except KafkaError as error:
            # Written but not committed: a later commit covers it, or a restart redelivers it harmlessly.
            log.warning("commit failed (%s); continuing", error)

    def _retry(self, action: Callable[[], T], what: str, stop: threading.Event) -> T:
        backoff = self.settings.retry_initial_s
        while True:
            try:
                return action()
            except Exception as error:  # store and client errors differ by backend; all are retried
                self.metrics.store_errors.inc()
                if stop.is_set():
                    if self._stop_deadline is None:
                        self._stop_deadline = time.monotonic() + self.settings.stop_grace_s
                    if time.monotonic() > self._stop_deadline:
                        raise StopRequested from error
                log.warning(
                    "%s failed (%s: %s); retrying in %.1f s", what, type(error).__name__, error, backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_max_s)

    def _update_lag(self) -> None:
        if time.monotonic() < self._next_lag_check:
            return
        self._next_lag_check = time.monotonic() + self.settings.lag_interval_s
        lag = 0
        for partition in self.consumer.assignment():
            highwater = self.consumer.highwater(partition)
            position = self.consumer.position(partition) if highwater is not None else None
            if highwater is not None and position is not None:
                lag += max(0, highwater - position)
        self.metrics.lag.set(lag)
