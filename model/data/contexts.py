"""Surface contexts the server turns into one extra input token (ours; the paper leaves context open).

- related: the subject item's own vector.
- search: a query id's vector, the L2-normalised mean of the items most engaged from that query in the
  training log (queries are ids in our data, not text). The artifact keeps the item indices per query, so
  the vectors always come from the artifact's own item tower.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pinrec.featurestore.schema import Vocabulary
from pinrec.model.data.eventlog import EventLog, positive_mask
from pinrec.model.data.sequences import ItemCatalog

ITEMS_PER_QUERY = 20  # the most engaged items that define a query (ours)
FILE = "search_queries.npz"


@dataclass(frozen=True)
class QueryItems:
    """Per query id, the item indices that define it (CSR: ids sorted, items[offsets[i]:offsets[i+1]])."""

    query_ids: np.ndarray
    offsets: np.ndarray
    items: np.ndarray

    def items_of(self, query_id: int) -> np.ndarray:
        at = int(np.searchsorted(self.query_ids, query_id))
        if at == len(self.query_ids) or self.query_ids[at] != query_id:
            return np.zeros(0, dtype=np.int64)
        return self.items[self.offsets[at] : self.offsets[at + 1]]

    def save(self, directory: Path) -> None:
        np.savez(directory / FILE, query_ids=self.query_ids, offsets=self.offsets, items=self.items)

    @classmethod
    def load(cls, directory: Path) -> QueryItems:
        path = directory / FILE
        if not path.exists():  # an artifact trained on data without search queries
            return cls(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64))
        with np.load(path) as saved:
            return cls(saved["query_ids"], saved["offsets"], saved["items"])


def search_query_items(log: EventLog, catalog: ItemCatalog, vocabulary: Vocabulary) -> QueryItems:
    """The ITEMS_PER_QUERY items engaged most often (positive actions) after each search query id."""
    events = log.events
    rows = events[positive_mask(events, vocabulary) & events["query_id"].notna().to_numpy()]
    items = catalog.index_of(rows["item_id"].to_numpy(dtype=np.int64))
    frame = rows.assign(item=items)[["query_id", "item"]]
    frame = frame[frame["item"] > 0]
    counts = frame.value_counts().reset_index(name="n").sort_values(["query_id", "n", "item"])
    top = counts.groupby("query_id", sort=True).tail(ITEMS_PER_QUERY)
    query_ids, starts = np.unique(top["query_id"].to_numpy(dtype=np.int64), return_index=True)
    return QueryItems(
        query_ids,
        np.append(starts, len(top)).astype(np.int64),
        top["item"].to_numpy(dtype=np.int64),
    )
