"""`pinrec backfill`: rebuild users' online sequences from the Parquet event log (after an online-store loss,
or to seed a new store).

Each user's logged events are merged into the stored sequence with merge_events, so a backfill is
idempotent (events already in a sequence change nothing, and an unchanged sequence is not written) and can
run while consumers write: every write is conditional on the version read, and a user some other writer
changed in between is read, merged and written again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import date
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from pinrec.featurestore.event_log import read_events
from pinrec.featurestore.schema import UserSequence, Vocabulary
from pinrec.stream.events import Event
from pinrec.stream.writes import merge_all, write_merged

if TYPE_CHECKING:
    from pinrec.stream.consumer import SequenceSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackfillReport:
    events: int  # logged events read (each event id once)
    unknown: int  # events whose action or surface the vocabulary no longer has (skipped)
    users: int  # users with events
    written: int  # sequences written (users whose sequence changed)
    conflicts: int  # writes refused because another writer changed the user first (then retried)


def backfill(
    log_uri: str,
    store: SequenceSink,
    vocabulary: Vocabulary,
    cap: int,
    since: date | None = None,
    users_per_batch: int = 2_000,
    clock: Callable[[], float] = time.time,
    progress: bool = True,
) -> BackfillReport:
    table = read_events(log_uri, since)
    known = pc.and_(
        pc.is_in(table["action"], value_set=pa.array(vocabulary.actions)),
        pc.is_in(table["surface"], value_set=pa.array(vocabulary.surfaces)),
    )
    events = table.filter(known).sort_by("user_id")
    user_ids = events["user_id"].to_numpy()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(user_ids)) + 1, [len(user_ids)]])
    users = len(starts) - 1
    written = conflicts = 0
    with tqdm(total=users, desc="backfill", unit="user", disable=not progress) as bar:
        for first in range(0, users, users_per_batch):
            last = min(first + users_per_batch, users)
            rows = events.slice(starts[first], starts[last] - starts[first])
            batch_written, batch_conflicts = _backfill_users(_by_user(rows), store, vocabulary, cap, clock)
            written += batch_written
            conflicts += batch_conflicts
            bar.update(last - first)
    report = BackfillReport(len(table), len(table) - len(events), users, written, conflicts)
    log.info("backfill: %s", report)
    return report


def _by_user(rows: pa.Table) -> dict[int, list[Event]]:
    columns = [rows[f.name].to_pylist() for f in fields(Event)]
    by_user: dict[int, list[Event]] = {}
    for values in zip(*columns, strict=True):
        event = Event(*values)
        by_user.setdefault(event.user_id, []).append(event)
    return by_user


def _backfill_users(
    by_user: dict[int, list[Event]],
    store: SequenceSink,
    vocabulary: Vocabulary,
    cap: int,
    clock: Callable[[], float],
) -> tuple[int, int]:
    """Merge and conditionally write until no write is refused; (sequences written, refusals)."""
    found = store.read(list(by_user))
    stored = {user_id: found.get(user_id, UserSequence(user_id)) for user_id in by_user}

    def now_us() -> int:
        return int(clock() * 1_000_000)

    merged = merge_all(by_user, stored, vocabulary, cap, now_us())
    written = write_merged(store, by_user, stored, merged, vocabulary, cap, now_us)
    return len(written.sequences), written.conflicts
