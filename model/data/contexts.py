"""Surface contexts the server turns into one extra input token (ours; the paper leaves context open).

- related: the subject item's own vector.
- search: a query id's vector, the L2-normalised mean of the items most engaged from that query in the
  training log (queries are ids in our data, not text). The artifact keeps the item indices per query, so
  the vectors always come from the artifact's own item tower.

`context_vectors` is the one computation of these vectors: the server's request path, per-surface finetuning
and the evaluation of surface heads all call it, so a head is trained and judged on the token it is served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pinrec.featurestore.schema import Vocabulary
from pinrec.model.data.eventlog import EventLog, positive_mask
from pinrec.model.data.sequences import ItemCatalog

ITEMS_PER_QUERY = 20  # the most engaged items that define a query (ours)
FILE = "search_queries.npz"
NO_QUERY = -1  # the query id of an event or request without a search query


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
    def empty(cls) -> QueryItems:
        return cls(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64))

    @classmethod
    def load(cls, directory: Path) -> QueryItems:
        path = directory / FILE
        if not path.exists():  # an artifact trained on data without search queries
            return cls.empty()
        with np.load(path) as saved:
            return cls(saved["query_ids"], saved["offsets"], saved["items"])


def search_query_items(
    log: EventLog, catalog: ItemCatalog, vocabulary: Vocabulary, held_out_users: np.ndarray | None = None
) -> QueryItems:
    """The ITEMS_PER_QUERY items engaged most often (positive actions) after each search query id; the
    engagements of held_out_users (raw ids: the users an evaluation judges) are left out."""
    events = log.events
    kept = positive_mask(events, vocabulary) & events["query_id"].notna().to_numpy()
    if held_out_users is not None:
        kept &= ~events["user_id"].isin(held_out_users).to_numpy()
    rows = events[kept]
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


def context_vectors(
    item_table: torch.Tensor,  # (V + 1, C) item vectors, row 0 padding
    subjects: np.ndarray | None = None,  # (N,) subject item indices, 0: none (or unknown)
    query_ids: np.ndarray | None = None,  # (N,) search query ids, NO_QUERY: none
    query_items: QueryItems | None = None,  # what defines each query id (needed with query_ids)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Context vectors (N, C) and which rows have one (N,) bool. A row with a subject item gets that item's
    vector (related); otherwise a row with a query id gets the L2-normalised mean of its items (search); a row
    with neither, or with a query that no items define, gets zeros and no context."""
    n = len(subjects) if subjects is not None else len(query_ids)
    if query_ids is None:
        query_ids, query_items = np.full(n, NO_QUERY), QueryItems.empty()
    vectors, present = _query_vectors(item_table, np.asarray(query_ids, dtype=np.int64), query_items)
    if subjects is not None:
        subject = torch.from_numpy(np.asarray(subjects, dtype=np.int64)).to(item_table.device)
        vectors = torch.where((subject > 0)[:, None], item_table[subject], vectors)
        present = present | (subject > 0)
    return vectors, present


def _query_vectors(
    item_table: torch.Tensor, query_ids: np.ndarray, query_items: QueryItems
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's normalised mean item vector (N, C) and whether any items define it (N,)."""
    known_ids, offsets = query_items.query_ids, query_items.offsets
    at = np.searchsorted(known_ids, query_ids).clip(0, max(len(known_ids) - 1, 0))
    counts = np.zeros(len(query_ids), dtype=np.int64)  # items per row
    if len(known_ids):
        counts = np.where(known_ids[at] == query_ids, offsets[at + 1] - offsets[at], 0)
    owners = np.repeat(np.arange(len(query_ids)), counts)  # the row of each gathered item
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    items = query_items.items[np.repeat(offsets[at], counts) + within]
    device = item_table.device
    sums = item_table.new_zeros(len(query_ids), item_table.shape[1])
    gathered = item_table[torch.from_numpy(items).to(device)]
    sums = sums.index_add(0, torch.from_numpy(owners).to(device), gathered)  # (N, C)
    return F.normalize(sums, dim=1), torch.from_numpy(counts > 0).to(device)


def event_contexts(events: pd.DataFrame, catalog: ItemCatalog) -> tuple[np.ndarray, np.ndarray]:
    """Each event's context as `context_vectors` takes it: the subject's catalog index (0: none or not in
    the catalog) and the query id (NO_QUERY: none)."""
    subject_ids = events["subject_item_id"]
    subjects = catalog.index_of(subject_ids.fillna(0).to_numpy(dtype=np.int64))
    subjects = np.where(subject_ids.notna().to_numpy(), subjects, 0)
    query_ids = events["query_id"].fillna(NO_QUERY).to_numpy(dtype=np.int64)
    return subjects, query_ids


def carries_contexts(events: pd.DataFrame, surface: str) -> bool:
    """Whether requests on this surface come with a context (its events carry a query or a subject)."""
    on_surface = events[events["surface"] == surface]
    return bool(on_surface["query_id"].notna().any() or on_surface["subject_item_id"].notna().any())
