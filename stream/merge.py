"""Merging new events into a user's stored sequence.

The merged sequence is the newest `cap` entries, by (event time, event key), of the union of the stored
entries and the new events, deduplicated by event key. That is a pure function of the set of events seen, so
merging is idempotent (a redelivered event changes nothing), insensitive to arrival order (late events land
in time order), and one event evicted by the cap stays evicted when it comes again.
"""

from __future__ import annotations

from collections.abc import Iterable

from pinrec.featurestore.schema import UserSequence, Vocabulary, event_key
from pinrec.stream.events import Event

Entry = tuple[int, int, int, int, int]  # (event_time_ms, event_key, item_id, action, surface)


def _entries(sequence: UserSequence) -> Iterable[Entry]:
    return zip(
        sequence.event_times_ms,
        sequence.event_keys,
        sequence.item_ids,
        sequence.actions,
        sequence.surfaces,
        strict=True,
    )


def merge_events(
    stored: UserSequence, events: Iterable[Event], vocabulary: Vocabulary, cap: int, now_us: int
) -> tuple[UserSequence, int]:
    """The new sequence and how many of the events were new to it (not duplicates or unsequenced)."""
    entries = {entry[1]: entry for entry in _entries(stored)}
    before = len(entries)
    for event in events:
        if event.action in vocabulary.unsequenced_actions:
            continue
        key = event_key(event.event_id)
        entries.setdefault(
            key,
            (
                event.ts_ms,
                key,
                event.item_id,
                vocabulary.action_code(event.action),
                vocabulary.surface_code(event.surface),
            ),
        )
    added = len(entries) - before
    # Strictly newer than the stored row even when writes come faster than the clock ticks.
    return _sequence(stored.user_id, entries.values(), cap, max(now_us, stored.version_us + 1)), added


def union(stored: UserSequence, known: UserSequence, cap: int) -> UserSequence:
    """The stored row with the entries of an older view of it (a cache, an earlier read) added back, at the
    stored version. Entries are events that were seen, so the union loses nothing, and it restores what a
    store that lost its data (a Redis restart without persistence, a flush) no longer holds."""
    entries = {entry[1]: entry for entry in (*_entries(known), *_entries(stored))}
    return _sequence(stored.user_id, entries.values(), cap, stored.version_us)


def _sequence(user_id: int, entries: Iterable[Entry], cap: int, version_us: int) -> UserSequence:
    kept = sorted(entries)[-cap:]
    times, keys, items, actions, surfaces = (
        (tuple(column) for column in zip(*kept, strict=True)) if kept else ((),) * 5
    )
    return UserSequence(
        user_id=user_id,
        item_ids=items,
        actions=actions,
        surfaces=surfaces,
        event_times_ms=times,
        event_keys=keys,
        version_us=version_us,
    )
