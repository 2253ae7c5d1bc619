"""A consumer-group member: kafka-python's KafkaConsumer, committing by hand, with its group join made
reliable.

kafka-python 3.0.12 (the newest release) can leave a member without partitions it was assigned:

- **A join that outlives poll's timeout is dropped.** A rejoin runs as a task. When poll's timer ends
  first, the task is left to finish, and the next poll should collect its assignment. But the group's
  leader marks its metadata as assigned while computing the assignment, so the next poll sees nothing left
  to join and never collects it. The member keeps its old partitions, or none, until the next metadata
  change (partitions added are then never consumed), and its heartbeats stay disabled. With 100 ms polls
  this happened in 3 of 20 runs that added a partition, and in 1 of 150 fresh starts.
- **A member can join before it knows its topic.** Its metadata is fetched after subscribing, and the first
  JoinGroup can go out before the answer arrives: the leader assigns nothing, and a second rebalance
  follows.

`GroupConsumer` fixes both: `subscribe` waits until the client's metadata has the topics' partitions, and
`poll` asks for a new join when a finished join was dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import Protocol

from kafka import KafkaConsumer

from pinrec.stream.security import KafkaSecurity

log = logging.getLogger(__name__)

METADATA_WAIT_S = 10.0  # how long subscribe waits for the topics' partitions before joining without them


class GroupMemberSettings(Protocol):
    bootstrap: str
    group_id: str
    max_poll_records: int
    metadata_max_age_ms: int
    security: KafkaSecurity


class GroupConsumer(KafkaConsumer):
    """KafkaConsumer whose subscribe knows the topics before joining and whose poll collects every join."""

    def subscribe(self, topics: Collection[str] = (), pattern=None, listener=None) -> None:
        super().subscribe(topics=topics, pattern=pattern, listener=listener)
        deadline = time.monotonic() + METADATA_WAIT_S
        unknown = list(topics)
        while unknown := [topic for topic in unknown if not self.partitions_for_topic(topic)]:
            if time.monotonic() > deadline:
                log.warning(
                    "topics %s are unknown to the brokers; they are consumed once they exist "
                    "(within metadata_max_age_ms)",
                    unknown,
                )
                return
            time.sleep(0.1)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True) -> dict:
        records = super().poll(timeout_ms=timeout_ms, max_records=max_records, update_offsets=update_offsets)
        self._rejoin_if_a_join_was_dropped()
        return records

    def _rejoin_if_a_join_was_dropped(self) -> None:
        coordinator = self._coordinator
        join = coordinator._join_task  # set while a join is unfinished or uncollected, None once applied
        if join is not None and join.is_done and not coordinator.need_rejoin():
            log.warning("a group join finished after poll's timeout and was not applied; joining again")
            coordinator.request_rejoin()


def group_consumer(settings: GroupMemberSettings) -> GroupConsumer:
    """A consumer-group member that commits by hand after its work is durable, reads large batches, and
    may hold one for minutes (a store outage, a slow object store) without leaving the group."""
    return GroupConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.max_poll_records,
        max_poll_interval_ms=600_000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        metadata_max_age_ms=settings.metadata_max_age_ms,
        **settings.security.client_options(),
    )
