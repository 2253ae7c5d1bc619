"""The event log every training source is turned into: one Parquet file of events (EVENT_LOG_SCHEMA, the
same contract as the Kafka events plus a session id) and, where the catalog has them, item content features.
The date-partitioned log of the event-log sink (featurestore/event_log.py) reads into the same shape.

Loaders of public datasets and the synthetic world produce an EventLog; training, evaluation and
`pinrec produce` consume one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pinrec.featurestore.event_log import read_events
from pinrec.featurestore.schema import EVENT_LOG_SCHEMA, Vocabulary

EVENTS_FILE = "events.parquet"
ITEMS_FILE = "items.parquet"
META_FILE = "eventlog.json"


def positive_mask(events: pd.DataFrame, vocabulary: Vocabulary) -> np.ndarray:
    """(N,) True for the events that are positive actions: those the vocabulary keeps in user sequences
    (an impression is not one). Training, search contexts, finetuning and the simulator's facts share it."""
    return ~events["action"].isin(list(vocabulary.unsequenced_actions)).to_numpy()


@dataclass
class EventLog:
    """events: one row per event with EVENT_LOG_SCHEMA's columns, sorted by (user_id, ts_ms).
    item_features: optional float32 matrix of content features, one row per item id in `item_ids`.
    info: free-form facts about the source (name, how outcomes were derived, generator settings)."""

    name: str
    events: pd.DataFrame
    item_ids: np.ndarray | None = None
    item_features: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in EVENT_LOG_SCHEMA.names if c not in self.events.columns]
        if missing:
            raise ValueError(f"event log {self.name!r} lacks columns {', '.join(missing)}")
        if (self.item_ids is None) != (self.item_features is None):
            raise ValueError("item_ids and item_features go together")
        if self.item_features is not None and len(self.item_ids) != len(self.item_features):
            raise ValueError("item_features needs one row per item id")

    @classmethod
    def from_frame(cls, name: str, frame: pd.DataFrame, **kwargs) -> EventLog:
        """Fill optional columns with nulls, fix dtypes and sort, so every loader returns the same shape."""
        frame = frame.copy()
        for column in ("query_id", "subject_item_id", "session_id"):
            if column not in frame:
                frame[column] = pd.array([pd.NA] * len(frame), dtype="Int64")
            else:
                frame[column] = frame[column].astype("Int64")
        for column in ("user_id", "item_id", "ts_ms"):
            frame[column] = frame[column].astype("int64")
        if "event_id" not in frame:
            frame["event_id"] = [f"{name}-{i}" for i in range(len(frame))]
        frame = frame[EVENT_LOG_SCHEMA.names].sort_values(["user_id", "ts_ms"], kind="stable")
        return cls(name, frame.reset_index(drop=True), **kwargs)

    @property
    def num_users(self) -> int:
        return int(self.events["user_id"].nunique())

    @property
    def num_items(self) -> int:
        return int(self.events["item_id"].nunique())

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.events, schema=EVENT_LOG_SCHEMA, preserve_index=False)
        pq.write_table(table, directory / EVENTS_FILE)
        if self.item_features is not None:
            items = pa.table(
                {
                    "item_id": pa.array(self.item_ids, pa.int64()),
                    "features": pa.FixedSizeListArray.from_arrays(
                        pa.array(self.item_features.astype(np.float32).ravel()), self.item_features.shape[1]
                    ),
                }
            )
            pq.write_table(items, directory / ITEMS_FILE)
        (directory / META_FILE).write_text(json.dumps({"name": self.name, "info": self.info}, indent=2))
        return directory

    @classmethod
    def read_sink(cls, uri: str, name: str) -> EventLog:
        """The log `pinrec sink` writes (date=YYYY-MM-DD/ folders of Parquet files; a path or a URI), each
        event id once. It has no item file: the catalog comes from the events."""
        events = read_events(uri).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
        return cls.from_frame(name, events, info={"source": "event-log sink", "uri": uri})

    @classmethod
    def read(cls, directory: Path) -> EventLog:
        events_path = directory / EVENTS_FILE
        if not events_path.exists():
            raise FileNotFoundError(f"{directory} holds no {EVENTS_FILE}; write one with `pinrec simulate`")
        meta = json.loads((directory / META_FILE).read_text()) if (directory / META_FILE).exists() else {}
        events = pq.read_table(events_path).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
        item_ids = item_features = None
        if (directory / ITEMS_FILE).exists():
            items = pq.read_table(directory / ITEMS_FILE)
            item_ids = items["item_id"].to_numpy()
            item_features = np.stack(items["features"].to_numpy(zero_copy_only=False)).astype(np.float32)
        return cls.from_frame(
            meta.get("name", directory.name),
            events,
            item_ids=item_ids,
            item_features=item_features,
            info=meta.get("info", {}),
        )
