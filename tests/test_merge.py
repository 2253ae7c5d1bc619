"""Merging events into a user's sequence: deduplicated by id, in time order, capped, and the same result
whatever the order, batching or redelivery of the events."""

from __future__ import annotations

import random

from pinrec.featurestore.schema import UserSequence, Vocabulary
from pinrec.stream.events import Event
from pinrec.stream.merge import merge_events, union

VOCABULARY = Vocabulary()


def event(i: int, ts: int, action: str = "click") -> Event:
    return Event(f"e{i}", 1, 100 + i, action, "home", ts)


def merge_all(batches: list[list[Event]], cap: int) -> UserSequence:
    sequence = UserSequence(1)
    for now_us, batch in enumerate(batches, start=1):
        sequence, _ = merge_events(sequence, batch, VOCABULARY, cap, now_us)
    return sequence


def test_events_are_kept_in_time_order_and_capped_to_the_newest():
    sequence = merge_all([[event(3, 30), event(1, 10)], [event(2, 20), event(4, 40)]], cap=3)
    assert sequence.item_ids == (102, 103, 104)
    assert sequence.event_times_ms == (20, 30, 40)
    assert sequence.actions == (VOCABULARY.action_code("click"),) * 3


def test_a_redelivered_event_changes_nothing_and_counts_as_a_duplicate():
    first, added = merge_events(UserSequence(1), [event(1, 10), event(2, 20)], VOCABULARY, 10, 1)
    again, added_again = merge_events(first, [event(2, 20), event(1, 10)], VOCABULARY, 10, 2)
    assert added == 2 and added_again == 0
    assert again.item_ids == first.item_ids and again.event_keys == first.event_keys


def test_the_result_does_not_depend_on_order_batching_or_redelivery():
    rng = random.Random(3)
    events = [event(i, rng.randint(0, 50)) for i in range(60)]  # many equal event times
    reference = merge_all([events], cap=25)
    for _ in range(20):
        shuffled = events + rng.sample(events, 15)  # with redeliveries
        rng.shuffle(shuffled)
        cuts = sorted(rng.sample(range(1, len(shuffled)), 6))
        batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
        merged = merge_all(batches, cap=25)
        assert (merged.item_ids, merged.event_times_ms, merged.event_keys) == (
            reference.item_ids,
            reference.event_times_ms,
            reference.event_keys,
        )


def test_an_event_evicted_by_the_cap_stays_evicted_when_redelivered():
    full = merge_all([[event(i, 10 * i) for i in range(1, 6)]], cap=3)
    again, _ = merge_events(full, [event(1, 10)], VOCABULARY, 3, 99)
    assert again.item_ids == full.item_ids == (103, 104, 105)


def test_impressions_do_not_enter_the_sequence():
    sequence, added = merge_events(
        UserSequence(1), [event(1, 10, "impression"), event(2, 20)], VOCABULARY, 10, 1
    )
    assert sequence.item_ids == (102,) and added == 1


def test_every_write_of_a_user_is_strictly_newer_even_when_the_clock_stands_still():
    stored = UserSequence(1, version_us=1_000)
    merged, _ = merge_events(stored, [event(1, 10)], VOCABULARY, 10, now_us=500)
    assert merged.version_us == 1_001
    newer, _ = merge_events(merged, [event(2, 10)], VOCABULARY, 10, now_us=500)
    assert newer.version_us == 1_002


def test_the_union_with_an_older_view_restores_lost_entries_at_the_stored_version():
    known = merge_all([[event(1, 10), event(2, 20)]], cap=3)  # what a consumer merged into earlier
    stored, _ = merge_events(UserSequence(1, version_us=50), [event(3, 30)], VOCABULARY, 3, 60)
    restored = union(stored, known, cap=3)
    assert restored.item_ids == (101, 102, 103) and restored.version_us == stored.version_us
    assert union(restored, known, cap=3) == restored  # idempotent
    assert union(stored, known, cap=2).item_ids == (102, 103)  # capped to the newest
