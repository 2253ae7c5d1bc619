"""Generation and retrieval (method §7), the same code for evaluation and for the server.

1. Prefill the history once, keeping the KV cache.
2. For each decode step emit one query per requested (outcome, offset); feed the "next" query of the
   feedback outcome (the one with the largest share) back as the following token, with that outcome as its
   action, the request's surface and the request time.
3. Split the budget N across outcomes by their shares, and within an outcome evenly over its queries; merge
   queries of the same outcome whose cosine similarity exceeds a threshold (their budgets add up).
4. Search the index for every query with over-fetch, drop items already seen, let the queries take their
   shares in turns by rank (an item already taken is skipped, so the over-fetch fills in for duplicates),
   and keep for every item the outcome and step of the query that found it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pinrec.model.data.prepare import PreparedData
from pinrec.model.data.sequences import HistoryBatch, recent_histories
from pinrec.model.index import ItemIndex
from pinrec.model.network import Decoding, PinRecModel


@dataclass(frozen=True)
class GenerationSettings:
    steps: int = 3  # decode steps (the paper: 3 unconditioned, 6 conditioned in production)
    merge_threshold: float = 0.9  # merge queries more similar than this (cosine)
    overfetch: float = 2.0  # fetch this many times a query's budget from the index (ours)


@torch.inference_mode()
def generate_queries(
    model: PinRecModel,
    history: HistoryBatch,  # (B, T) left-padded
    surface: int,
    outcomes: list[int],  # outcome codes to condition on; the first is fed back
    steps: int,
    now_ms: torch.Tensor,  # (B,) request times
    head: str = "shared",
    use_cache: bool = True,
    context: torch.Tensor | None = None,  # (B, C) a surface context vector appended after the history
    timings: dict[str, float] | None = None,  # filled with the prefill and decode seconds
    item_table: torch.Tensor | None = None,  # (V + 1, C) item vectors computed once (the server's)
) -> torch.Tensor:
    """Queries (B, steps, O, K, C) for O outcomes and the model's K offsets. use_cache=False recomputes the
    whole sequence at every step (the reference the KV cache must equal, and its speed baseline).

    context: the request's surface context as one more input token at the request time, with the feedback
    outcome as its action (ours): the subject item's vector on related, the query's vector on search. A
    cold-start user (all padding) is then answered from the context alone."""
    started = time.perf_counter()
    if model.training:  # (switching costs a walk over every module: not on every request)
        model.eval()
    B = history.items.shape[0]
    offsets = len(model.config.offsets)
    n_outcomes = len(outcomes)
    outcome_grid = torch.tensor(outcomes).view(1, n_outcomes, 1).expand(B, n_outcomes, offsets)
    offset_grid = torch.arange(offsets).view(1, 1, offsets).expand(B, n_outcomes, offsets)
    surface_grid = torch.full((B, n_outcomes, offsets), surface)

    # The context token (if any) and the fed-back queries are appended with the feedback outcome as their
    # action and the request's surface.
    last, state = prefill_request(
        model, history, now_ms, outcomes[0], surface, steps - 1, context, use_cache, item_table
    )  # (B, C)
    if timings is not None:
        timings["prefill"] = time.perf_counter() - started
        started = time.perf_counter()
    queries = []
    for step in range(steps):
        q = model.query(
            last[:, None, None, :].expand(B, n_outcomes, offsets, -1),
            outcome_grid,
            surface_grid,
            offset_grid,
            head,
        )
        queries.append(q)  # (B, O, K, C)
        if step == steps - 1:
            break
        last, state = model.step(q[:, 0, 0], state)  # the feedback outcome's "next" query as an item
    if timings is not None:
        timings["decode"] = time.perf_counter() - started
    return torch.stack(queries, dim=1)  # (B, steps, O, K, C)


def prefill_request(
    model: PinRecModel,
    history: HistoryBatch,  # (B, T) left-padded
    now_ms: torch.Tensor,  # (B,) request times
    action: int,  # the action of the appended tokens: the request's feedback outcome
    surface: int,  # the request's surface
    decode_steps: int,  # tokens decoding will append after the context
    context: torch.Tensor | None = None,  # (B, C) the request's context vectors
    use_cache: bool = True,
    item_table: torch.Tensor | None = None,  # (V + 1, C)
) -> tuple[torch.Tensor, Decoding]:
    """The last hidden state (B, C) a request's queries start from and the state decoding appends to: the
    history prefilled, then the context token (if any) at the request time. Finetuning trains a surface head
    on this same hidden state."""
    last, state = model.prefill(
        **history.to_dict(),
        now_ms=now_ms,
        action=action,
        surface=surface,
        appended=decode_steps + (0 if context is None else 1),
        use_cache=use_cache,
        item_table=item_table,
    )  # (B, C)
    if context is not None:
        last, state = model.step(context, state)
    return last, state


def in_groups(keys: np.ndarray, compute: Callable[[np.ndarray], torch.Tensor]) -> torch.Tensor:
    """compute(rows) for the rows (N,) of each distinct key, put back in row order. A prefill takes one
    action and one context-or-none for its whole batch, so requests that differ in them are grouped."""
    parts, order = [], []
    for key in np.unique(keys):
        rows = np.flatnonzero(keys == key)
        parts.append(compute(rows))
        order.append(rows)
    merged = torch.cat(parts)
    return merged[torch.from_numpy(np.argsort(np.concatenate(order))).to(merged.device)]


@dataclass
class PlannedQuery:
    vector: np.ndarray  # (C,)
    budget: float  # items this query should contribute
    outcome: int
    step: int


def plan_queries(
    queries: np.ndarray,  # (steps, O, K, C) for one request
    outcomes: list[int],
    shares: list[float],  # per outcome, summing to 1
    total: int,
    merge_threshold: float,
) -> list[PlannedQuery]:
    steps, _, K, _ = queries.shape
    planned: list[PlannedQuery] = []
    for o, (outcome, share) in enumerate(zip(outcomes, shares, strict=True)):  # o indexes axis 1
        if share <= 0:
            continue
        each = total * share / (steps * K)
        for step in range(steps):
            for k in range(K):
                planned.append(PlannedQuery(queries[step, o, k], each, outcome, step))
    return merge_similar(planned, merge_threshold)


def merge_similar(planned: list[PlannedQuery], threshold: float) -> list[PlannedQuery]:
    """Greedy, within each outcome: a query within `threshold` cosine of a kept query of the same outcome
    adds its budget to it (earlier steps and larger budgets are kept first, so a merged query keeps the
    label of the earliest, largest one). Queries of different outcomes never merge, so the request's
    outcome split is kept exactly (ours; the paper merges near-duplicates without saying across what)."""
    if not planned:
        return []
    vectors = np.stack([q.vector for q in planned])
    similarity = vectors @ vectors.T  # (N, N), once
    kept: list[PlannedQuery] = []
    kept_rows: dict[int, list[int]] = {}  # per outcome: rows of planned that were kept, in kept order
    kept_of: dict[int, list[PlannedQuery]] = {}
    for row in sorted(range(len(planned)), key=lambda r: (planned[r].step, -planned[r].budget)):
        query = planned[row]
        rows = kept_rows.setdefault(query.outcome, [])
        if rows:
            best = int(similarity[row, rows].argmax())
            if similarity[row, rows[best]] > threshold:
                kept_of[query.outcome][best].budget += query.budget
                continue
        merged = PlannedQuery(query.vector, query.budget, query.outcome, query.step)
        rows.append(row)
        kept_of.setdefault(query.outcome, []).append(merged)
        kept.append(merged)
    return kept


@dataclass
class Retrieved:
    items: np.ndarray  # item indices, best first
    scores: np.ndarray  # cosine of the query that found each item
    outcomes: np.ndarray  # outcome code of that query
    steps: np.ndarray  # decode step of that query
    fetched: int  # items the queries retrieved before dedup (for the diversity share)
    unique_fetched: int

    @property
    def unique_share(self) -> float:
        """Diversity: share of unique items among everything the queries retrieved."""
        return self.unique_fetched / self.fetched if self.fetched else 0.0


Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (vectors, depth) -> scores, items


def _depth(planned: list[PlannedQuery], total: int, seen: np.ndarray, overfetch: float) -> int:
    """How deep each query of a request searches first: its largest quota, over-fetched, plus the seen."""
    quotas = _round_budgets([q.budget for q in planned], total)
    return int(math.ceil(max(quotas, default=0) * overfetch)) + len(seen)


class Searches:
    """One index search for the queries of several requests (faiss spreads a batch over its threads); each
    request then reads its own rows, as deep as it asked, from `searches[i]`; a deeper search than the
    shared one goes to the index alone."""

    def __init__(
        self,
        index: ItemIndex,
        plans: list[list[PlannedQuery]],  # per request
        totals: list[int],  # per request: its k
        seen: list[np.ndarray],  # per request: the items it never returns
        overfetch: float,
    ) -> None:
        self.index = index
        requests = zip(plans, totals, seen, strict=True)
        depths = [_depth(plan, total, items, overfetch) for plan, total, items in requests]
        self.depth = max(max(depths, default=1), 1)
        vectors = [np.stack([q.vector for q in plan]) for plan in plans]
        self.bounds = np.cumsum([0] + [len(v) for v in vectors])
        self.scores, self.found = index.search(np.concatenate(vectors), self.depth)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, request: int) -> Search:
        if not 0 <= request < len(self):
            raise IndexError(request)
        rows = slice(self.bounds[request], self.bounds[request + 1])

        def search(vectors: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
            if depth > self.depth:
                return self.index.search(vectors, depth)
            return self.scores[rows, :depth], self.found[rows, :depth]

        return search


def retrieve(
    index: ItemIndex,
    planned: list[PlannedQuery],
    total: int,
    seen: np.ndarray,
    overfetch: float,
    search: Search | None = None,  # the index's search, or a batch's (Searches) that already ran
) -> Retrieved:
    """Each query contributes its budget of unseen items (rounded so that the budgets sum to total). The
    queries take turns rank by rank; an item another query already took is skipped and the query goes on
    down its over-fetched list, so duplicates do not shrink the answer below total while the over-fetch
    lasts. The list is ordered by score."""
    search = search or index.search
    quotas = _round_budgets([q.budget for q in planned], total)
    vectors = np.stack([q.vector for q in planned])
    depth = _depth(planned, total, seen, overfetch)
    ranked, taken = _take_turns(search, vectors, quotas, seen, depth)
    if len(taken) < total and depth < total + len(seen):
        # Queries so alike that the over-fetch ran out: a list of total + seen items per query always
        # leaves each query enough fresh items for its quota.
        ranked, taken = _take_turns(search, vectors, quotas, seen, total + len(seen))
    # Diversity: how much the queries' own top-quota lists overlap (before the turns fill the gaps).
    own = [np.asarray(items[:q], dtype=np.int64) for (items, _), q in zip(ranked, quotas, strict=True)]
    all_fetched = np.concatenate(own) if own else np.zeros(0, dtype=np.int64)
    best = sorted(taken.items(), key=lambda entry: -entry[1][0])
    return Retrieved(
        items=np.array([item for item, _ in best], dtype=np.int64),
        scores=np.array([score for _, (score, _) in best], dtype=np.float32),
        outcomes=np.array([planned[q].outcome for _, (_, q) in best], dtype=np.int64),
        steps=np.array([planned[q].step for _, (_, q) in best], dtype=np.int64),
        fetched=len(all_fetched),
        unique_fetched=len(np.unique(all_fetched)),
    )


def _take_turns(search: Search, vectors: np.ndarray, quotas: list[int], seen: np.ndarray, depth: int):
    """Each query's unseen items of its top `depth` (ranked lists), and the items taken in turns rank by
    rank until every query has its quota or its list ran out: item -> (score, query)."""
    scores, found = search(vectors, max(depth, 1))
    fresh = (found > 0) & ~np.isin(found, seen)
    ranked = [(found[i][fresh[i]].tolist(), scores[i][fresh[i]].tolist()) for i in range(len(vectors))]
    taken: dict[int, tuple[float, int]] = {}
    counts = [0] * len(vectors)
    open_queries = [i for i, quota in enumerate(quotas) if quota > 0]
    for rank in range(depth):
        if not open_queries:
            break
        for i in open_queries:
            items, item_scores = ranked[i]
            if rank < len(items) and items[rank] not in taken:
                taken[items[rank]] = (item_scores[rank], i)
                counts[i] += 1
        open_queries = [i for i in open_queries if counts[i] < quotas[i] and rank + 1 < len(ranked[i][0])]
    return ranked, taken


def _round_budgets(budgets: list[float], total: int) -> list[int]:
    """Integer quotas summing to total (largest remainders first)."""
    floors = [int(math.floor(b)) for b in budgets]
    short = total - sum(floors)
    by_remainder = sorted(range(len(budgets)), key=lambda i: floors[i] - budgets[i])
    for i in by_remainder[: max(short, 0)]:
        floors[i] += 1
    return floors


def sample_queries(
    model: PinRecModel,
    data: PreparedData,
    users: int = 100,
    steps: int = GenerationSettings.steps,
    seed: int = 0,
) -> np.ndarray:
    """Queries (N, C) the model generates for a sample of users (their newest history, the data's outcome
    mix, its main surface): what the index's recall is measured on when it is built."""
    histories = data.histories
    rows = np.random.default_rng(seed).choice(
        len(histories.user_ids), min(users, len(histories.user_ids)), replace=False
    )
    outcomes, _ = data.outcome_mix()
    inputs = recent_histories(histories, rows, histories.offsets[rows + 1], model.config.max_len)
    queries = generate_queries(model, inputs, data.primary_surface, outcomes, steps, inputs.times[:, -1] + 1)
    return queries.reshape(-1, queries.shape[-1]).numpy()
