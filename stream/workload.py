"""Event sources for `pinrec produce` and the stream benchmark: a synthetic stream with Zipf-like user
activity, or a Parquet event log."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pinrec.featurestore.schema import EVENT_LOG_SCHEMA, Vocabulary
from pinrec.stream.events import Event


def zipf_user_stream(
    users: int,
    events: int,
    vocabulary: Vocabulary,
    seed: int = 0,
    exponent: float = 1.1,
    items: int = 100_000,
) -> Iterator[Event]:
    """events events over user ids 1..users, where the r-th most active user acts ~ r^-exponent as often.
    Event times are placeholders; the producer stamps the send time."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, users + 1) ** exponent
    user_ids = rng.permutation(users)[rng.choice(users, size=events, p=weights / weights.sum())] + 1
    item_ids = rng.integers(1, items + 1, size=events)
    actions = rng.integers(0, len(vocabulary.actions), size=events)
    surfaces = rng.integers(0, len(vocabulary.surfaces), size=events)
    run = f"{int(rng.integers(0, 2**48)):012x}"  # distinct per seed: event ids never collide across runs
    for i in range(events):
        yield Event(
            event_id=f"{run}-{i}",
            user_id=int(user_ids[i]),
            item_id=int(item_ids[i]),
            action=vocabulary.actions[actions[i]],
            surface=vocabulary.surfaces[surfaces[i]],
            ts_ms=0,
        )


def event_log_stream(path: Path) -> Iterator[Event]:
    """The events of a Parquet event log (EVENT_LOG_SCHEMA), in file order; a folder written by
    `pinrec simulate` stands for its events.parquet."""
    if path.is_dir():
        path = path / "events.parquet"
    table = pq.read_table(path)
    missing = [name for name in EVENT_LOG_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ValueError(f"{path} is not an event log: columns {', '.join(missing)} are missing")
    fields = [f.name for f in dataclasses.fields(Event)]
    for batch in table.select(fields).to_batches(max_chunksize=10_000):
        for row in batch.to_pylist():
            yield Event(**row)
