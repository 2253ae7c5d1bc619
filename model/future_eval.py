"""Protocols B and C: future-window retrieval on held-out users, generated exactly as the server does.

B: unordered Recall@10 (a target counts when it is in the top 10 of any generated query), budgeted
Recall@N (the final list of N items after budget split, merging and dedup), diversity (unique share of what
the queries retrieved; catalog coverage of the final lists over all test users).
C: the whole budget on one outcome; recall on targets of that outcome (matched) against recall on the same
targets when another outcome is asked for (mismatched).
B for a surface with contexts (search, related), by session: each of a held-out user's sessions on the
surface in the window is one request with that session's context token (its query, its subject item), asked
at its start on the history before it, and judged on the items engaged in it (budgeted Recall@N).

Every protocol builds `Requests` and answers them through the same path (`_answers`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pinrec.model.data.contexts import context_vectors, event_contexts, search_query_items
from pinrec.model.data.eventlog import positive_mask
from pinrec.model.data.prepare import PreparedData
from pinrec.model.data.sequences import Examples, Histories, positives_before, recent_histories
from pinrec.model.generate import (
    GenerationSettings,
    Retrieved,
    generate_queries,
    in_groups,
    plan_queries,
    retrieve,
)
from pinrec.model.index import ItemIndex
from pinrec.model.network import PinRecModel


@dataclass(frozen=True)
class FutureEvalSettings:
    budget: int = 100  # N of the budgeted recall
    unordered_k: int = 10
    generation: GenerationSettings = GenerationSettings()
    chunk: int = 256


@dataclass(frozen=True)
class Requests:
    """Evaluation requests, each answered as the server answers one: the history [offsets[row], end) of a
    user, asked at now_ms (after a context token where it has one), judged on its target items."""

    rows: np.ndarray  # (N,) user rows in Histories
    ends: np.ndarray  # (N,) exclusive end of each history
    now_ms: np.ndarray  # (N,) request times
    targets: list[np.ndarray]  # item indices each request should retrieve
    seen: list[np.ndarray]  # item indices the server leaves out of each answer
    present: np.ndarray  # (N,) bool: the request has a context
    contexts: torch.Tensor | None = None  # (N, C) context vectors (rows without one are ignored)

    def __len__(self) -> int:
        return len(self.rows)


def _cases(histories: Histories, examples: Examples, surface: int | None) -> list[tuple[int, np.ndarray]]:
    """(example, target positions) pairs; with a surface, only targets on that surface (cases without any
    are dropped)."""
    cases = []
    for i in range(len(examples)):
        positions = examples.targets[examples.target_offsets[i] : examples.target_offsets[i + 1]]
        if surface is not None:
            positions = positions[histories.surfaces[positions] == surface]
        if len(positions):
            cases.append((i, positions))
    return cases


def _window_requests(
    histories: Histories, examples: Examples, cases: list[tuple[int, np.ndarray]]
) -> Requests:
    """One request per case, right after the cut and without a context: targets are the window's items."""
    picked = np.array([i for i, _ in cases], dtype=np.int64)
    rows, ends = examples.rows[picked], examples.ends[picked]
    return Requests(
        rows,
        ends,
        histories.times[ends - 1] + 1,
        [np.unique(histories.items[positions]) for _, positions in cases],
        [histories.items[histories.offsets[row] : end] for row, end in zip(rows, ends, strict=True)],
        np.zeros(len(cases), dtype=bool),
    )


def surface_session_requests(
    model: PinRecModel, data: PreparedData, examples: Examples, window_ms: int, surface: int
) -> Requests:
    """One request per session of `surface` by the users of `examples` that starts in their window (cut
    time, cut time + window_ms] and engages with some item: asked at the session's start on the user's
    positives before it, with the session's context from the model's item vectors, judged on the session's
    engaged items. The subject item counts as seen (the server never recommends it back)."""
    histories = data.histories
    engaged = _engaged_in_window(data, examples, window_ms, surface)
    sessions = engaged.drop_duplicates("session_id")  # one row per session, in session id order
    rows = np.searchsorted(histories.user_ids, sessions["user_id"].to_numpy(dtype=np.int64))
    now = sessions["start"].to_numpy(dtype=np.int64)
    ends = positives_before(histories, rows, now)
    subjects, query_ids = event_contexts(sessions, data.catalog)
    with torch.no_grad():
        table = model.items.table()  # (V + 1, C)
    # Queries are defined by the other users' engagements: the judged sessions must not define them.
    held_out = histories.user_ids[examples.rows]
    query_items = search_query_items(data.log, data.catalog, data.vocabulary, held_out)
    contexts, present = context_vectors(table, subjects, query_ids, query_items)
    return Requests(
        rows,
        ends,
        now,
        [np.unique(group.to_numpy()) for _, group in engaged.groupby("session_id", sort=True)["item"]],
        [
            np.append(histories.items[histories.offsets[row] : end], subject)  # subject 0: none
            for row, end, subject in zip(rows, ends, subjects, strict=True)
        ],
        present.numpy(),
        contexts,
    )


def _engaged_in_window(data: PreparedData, examples: Examples, window_ms: int, surface: int) -> pd.DataFrame:
    """The positive events (of catalog items) of the sessions on `surface` that start in the window of a
    user of `examples`, sorted by session, with the session's start ("start") and the catalog index
    ("item")."""
    histories, events = data.histories, data.log.events
    users = histories.user_ids[examples.rows]
    on_surface = events[
        (events["surface"] == data.vocabulary.surfaces[surface])
        & events["session_id"].notna()
        & events["user_id"].isin(users)
    ]
    starts = on_surface.groupby("session_id")["ts_ms"].transform("min").to_numpy(dtype=np.int64)
    cuts = pd.Series(histories.times[examples.ends - 1], index=users)
    cut = cuts.loc[on_surface["user_id"]].to_numpy(dtype=np.int64)
    items = data.catalog.index_of(on_surface["item_id"].to_numpy(dtype=np.int64))
    keep = positive_mask(on_surface, data.vocabulary) & (starts > cut) & (starts <= cut + window_ms)
    engaged = on_surface.assign(start=starts, item=items)[keep & (items > 0)]
    return engaged.sort_values("session_id", kind="stable")


def _asked_outcomes(
    model: PinRecModel, outcomes: list[int], shares: list[float]
) -> tuple[list[int], list[float]]:
    """The outcome budget a model is judged with."""
    if not model.config.outcome_conditioning:
        # Its queries are the same whatever outcome is asked: one query per offset takes the whole budget
        # (asking once per outcome would only duplicate them and halve its unique share).
        return outcomes[:1], [1.0]
    return outcomes, shares


@torch.no_grad()
def _queries(
    model: PinRecModel,
    histories: Histories,
    requests: Requests,
    picked: np.ndarray,
    surface: int,
    outcomes: list[int],
    steps: int,
    head: str,
) -> np.ndarray:
    """Queries (len(picked), steps, O, K, C) of these requests; those with a context and those without are
    generated apart (one prefill takes a context for all its rows or for none)."""
    present = requests.present[picked]

    def generate(rows: np.ndarray) -> torch.Tensor:
        at = picked[rows]
        inputs = recent_histories(histories, requests.rows[at], requests.ends[at], model.config.max_len)
        now = torch.from_numpy(requests.now_ms[at])
        context = requests.contexts[at] if present[rows[0]] else None
        return generate_queries(model, inputs, surface, outcomes, steps, now, head, context=context)

    return in_groups(present, generate).numpy()


def _answers(
    model: PinRecModel,
    index: ItemIndex,
    histories: Histories,
    requests: Requests,
    surface: int,
    outcomes: list[int],
    shares: list[float],
    settings: FutureEvalSettings,
    head: str,
) -> Iterator[tuple[int, np.ndarray, Retrieved]]:
    """Each request's number, its queries (steps, O, K, C) and its budgeted list of settings.budget items:
    budget split, merging, search with over-fetch and dedup, as the server answers."""
    for first in range(0, len(requests), settings.chunk):
        picked = np.arange(first, min(first + settings.chunk, len(requests)))
        queries = _queries(
            model, histories, requests, picked, surface, outcomes, settings.generation.steps, head
        )
        for i, request in zip(picked, queries, strict=True):
            planned = plan_queries(
                request, outcomes, shares, settings.budget, settings.generation.merge_threshold
            )
            found = retrieve(index, planned, settings.budget, requests.seen[i], settings.generation.overfetch)
            yield i, request, found


def _unordered_top(index: ItemIndex, request: np.ndarray, seen: np.ndarray, k: int) -> set[int]:
    """Every unseen item in the top k of any of the request's queries."""
    _, found = index.search(request.reshape(-1, request.shape[-1]), k + len(seen))
    top: set[int] = set()
    for row in found:
        top.update(row[(row > 0) & ~np.isin(row, seen)][:k].tolist())
    return top


def future_window_metrics(
    model: PinRecModel,
    index: ItemIndex,
    histories: Histories,
    examples: Examples,
    outcomes: list[int],
    shares: list[float],
    surface: int,
    settings: FutureEvalSettings = FutureEvalSettings(),
    head: str = "shared",
    target_surface: int | None = None,
) -> dict[str, float]:
    """Protocol B: one request per held-out user right after the cut, without a context (home)."""
    outcomes, shares = _asked_outcomes(model, outcomes, shares)
    requests = _window_requests(histories, examples, _cases(histories, examples, target_surface))
    unordered, budgeted, unique_share, covered = [], [], [], set()
    for i, request, found in _answers(
        model, index, histories, requests, surface, outcomes, shares, settings, head
    ):
        targets, seen = requests.targets[i], requests.seen[i]
        top = _unordered_top(index, request, seen, settings.unordered_k)
        unordered.append(np.isin(targets, list(top)).mean())
        budgeted.append(np.isin(targets, found.items).mean())
        unique_share.append(found.unique_share)
        covered.update(found.items.tolist())
    return {
        f"recall@{settings.unordered_k}_unordered": float(np.mean(unordered)) if unordered else 0.0,
        f"recall@{settings.budget}_budgeted": float(np.mean(budgeted)) if budgeted else 0.0,
        "diversity_unique_share": float(np.mean(unique_share)) if unique_share else 0.0,
        "catalog_coverage": len(covered) / index.size,
        "cases": len(requests),
    }


def surface_session_metrics(
    model: PinRecModel,
    index: ItemIndex,
    data: PreparedData,
    examples: Examples,
    window_ms: int,
    surface: int,
    outcomes: list[int],
    shares: list[float],
    settings: FutureEvalSettings = FutureEvalSettings(),
    head: str = "shared",
) -> dict[str, float]:
    """Protocol B for a surface with contexts, by session (`surface_session_requests`): the budgeted recall
    of each session's engaged items, the session's context token generated as the server does."""
    outcomes, shares = _asked_outcomes(model, outcomes, shares)
    requests = surface_session_requests(model, data, examples, window_ms, surface)
    budgeted = [
        np.isin(requests.targets[i], found.items).mean()
        for i, _, found in _answers(
            model, index, data.histories, requests, surface, outcomes, shares, settings, head
        )
    ]
    return {
        f"recall@{settings.budget}_budgeted": float(np.mean(budgeted)) if budgeted else 0.0,
        "cases": len(requests),
    }


def outcome_control_metrics(
    model: PinRecModel,
    index: ItemIndex,
    histories: Histories,
    examples: Examples,
    outcomes: list[int],
    surface: int,
    settings: FutureEvalSettings = FutureEvalSettings(),
    head: str = "shared",
) -> dict[str, float]:
    """For each target with outcome o among `outcomes`: is it retrieved (budgeted list of N) when the whole
    budget asks for o (matched), and on average when it asks for each other outcome (mismatched)?"""
    cases = _cases(histories, examples, None)
    requests = _window_requests(histories, examples, cases)
    lists = {}
    for outcome in outcomes:
        for i, _, found in _answers(
            model, index, histories, requests, surface, [outcome], [1.0], settings, head
        ):
            lists[i, outcome] = found.items
    matched, mismatched = [], []
    for i, (_, positions) in enumerate(cases):
        for outcome in outcomes:
            targets = np.unique(histories.items[positions[histories.actions[positions] == outcome]])
            if not len(targets):
                continue
            matched.append(np.isin(targets, lists[i, outcome]).mean())
            others = [np.isin(targets, lists[i, other]).mean() for other in outcomes if other != outcome]
            mismatched.append(float(np.mean(others)))
    return {
        "recall_matched": float(np.mean(matched)) if matched else 0.0,
        "recall_mismatched": float(np.mean(mismatched)) if mismatched else 0.0,
        "targets_groups": len(matched),
    }
