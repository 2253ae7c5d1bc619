"""Merging events into stored sequences and writing them where other writers may race on the same users
(consumers of re-partitioned or keyless traffic, a consumer that stalled, `pinrec backfill`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pinrec.featurestore.schema import UserSequence, Vocabulary
from pinrec.stream.events import Event
from pinrec.stream.merge import merge_events, union

if TYPE_CHECKING:
    from pinrec.stream.consumer import SequenceSink

T = TypeVar("T")


@dataclass(frozen=True)
class Written:
    sequences: list[UserSequence]  # the sequences written (users whose entries changed)
    applied: int  # events new to their user's sequence
    conflicts: int  # writes refused because another writer changed the row first (merged again)


def write_merged(
    sink: SequenceSink,
    by_user: Mapping[int, list[Event]],
    stored: dict[int, UserSequence],
    merged: dict[int, tuple[UserSequence, int]],
    vocabulary: Vocabulary,
    cap: int,
    now_us: Callable[[], int],
    call: Callable[[Callable[[], T]], T] = lambda action: action(),
) -> Written:
    """Write the merged rows whose entries changed (`merged` from merge_all), each on the condition that the
    stored row is still the one it was merged into. A row that another writer changed meanwhile is read
    again and merged again until no write conflicts: a write never replaces a sequence it has not seen. The
    entries of the row merged into before are kept too (they are events seen, so nothing is lost), which puts
    back what a store that lost its data no longer holds. `stored` and `merged` are updated in place; `call`
    runs each store call (the consumer's retries with backoff)."""
    pending, conflicts = merged, 0
    while True:
        changed = [sequence for sequence, _ in pending.values() if _changed(sequence, stored)]
        expected = {sequence.user_id: stored[sequence.user_id].version_us for sequence in changed}
        refused = call(functools.partial(sink.write_if_unchanged, changed, expected))
        if not refused:
            break
        conflicts += len(refused)
        fresh = call(functools.partial(sink.read, refused))
        for user_id in refused:
            stored[user_id] = union(fresh.get(user_id, UserSequence(user_id)), stored[user_id], cap)
        pending = merge_all(
            {user_id: by_user[user_id] for user_id in refused}, stored, vocabulary, cap, now_us()
        )
        merged.update(pending)
    written = [sequence for sequence, _ in merged.values() if _changed(sequence, stored)]
    return Written(written, sum(added for _, added in merged.values()), conflicts)


def merge_all(
    by_user: Mapping[int, list[Event]],
    stored: Mapping[int, UserSequence],
    vocabulary: Vocabulary,
    cap: int,
    now_us: int,
) -> dict[int, tuple[UserSequence, int]]:
    """Each user's merged sequence and how many of the events were new to it."""
    return {
        user_id: merge_events(stored[user_id], events, vocabulary, cap, now_us)
        for user_id, events in by_user.items()
    }


def _changed(sequence: UserSequence, stored: Mapping[int, UserSequence]) -> bool:
    """Whether the merge changed the user's entries (events older than a full sequence's oldest do not)."""
    return sequence.event_keys != stored[sequence.user_id].event_keys
