"""The recommender behind every surface: one loaded artifact (backbone, heads, item vectors, index) shared
by all KServe models of the process, and the request path of architecture §4.4.

features -> (context token) -> prefill with KV cache -> decode -> budget split and merge -> faiss search
with over-fetch -> dedup, seen items dropped -> items with scores, outcome and step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pinrec.featurestore.schema import UserSequence
from pinrec.model.artifacts import Artifact, load_artifact
from pinrec.model.data.contexts import context_vectors
from pinrec.model.data.sequences import HistoryBatch, item_indices
from pinrec.model.generate import Searches, generate_queries, plan_queries, retrieve
from pinrec.serving.request import Limits, RawHistory, RecommendRequest
from pinrec.serving.settings import ServeSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recommendation:
    """One request's answer, built once by `Recommender.recommend`; the predictor encodes it per protocol."""

    item_ids: np.ndarray  # raw ids, best first
    scores: np.ndarray
    outcomes: list[str]  # the outcome of the query that retrieved each item ("popular" on cold start)
    steps: np.ndarray  # its decode step (-1 on cold start)
    cold_start: bool  # no usable history: answered from the context alone, or from popularity
    context_used: bool  # the request's context became an input token
    model_version: str
    unique_share: float  # diversity: unique share of what the queries retrieved before dedup
    pairwise_distance: float  # diversity: mean pairwise cosine distance of the returned items
    staleness_s: float | None  # request time minus the newest history event (None without history)
    timings: dict[str, float]  # seconds per stage


@dataclass(frozen=True)
class IndexedHistory:
    """A history in the served artifact's terms: catalog indices (1..n, 0 is padding) instead of raw item
    ids, the events of items the artifact does not know dropped. Only `LoadedModel.indexed` makes one."""

    items: np.ndarray  # catalog indices, oldest first
    actions: np.ndarray  # action codes
    surfaces: np.ndarray  # surface codes
    times_ms: np.ndarray


@dataclass(frozen=True)
class _Prepared:
    """What a request's answer starts from: its history in the artifact's terms, its context token, the
    items it must not return and its request time."""

    history: IndexedHistory | None
    context: torch.Tensor | None  # (C,)
    seen: np.ndarray  # catalog indices never returned: the history's items and the subject item
    now_ms: int
    staleness_s: float | None  # request time minus the newest history event

    @property
    def items(self) -> np.ndarray:
        return self.history.items if self.history is not None else np.zeros(0, dtype=np.int64)

    @classmethod
    def of(cls, model: LoadedModel, request: RecommendRequest, history: RawHistory | None) -> _Prepared:
        now_ms = request.now_ms if request.now_ms is not None else int(time.time() * 1000)
        indexed, staleness = None, None
        if history is not None and len(history.item_ids):
            staleness = max(0.0, (now_ms - int(history.times_ms[-1])) / 1000)
            indexed = model.indexed(history)
        seen = indexed.items if indexed is not None else np.zeros(0, dtype=np.int64)
        if request.subject_item_id is not None:
            seen = np.append(seen, model.index_of(np.array([request.subject_item_id])))
        return cls(indexed, model.context_vector(request), seen, now_ms, staleness)


@dataclass(frozen=True)
class Candidates:
    """What one retrieval path (generation or popularity) picked, before it becomes a Recommendation."""

    items: np.ndarray  # catalog indices, best first
    scores: np.ndarray
    outcomes: list[str]
    steps: np.ndarray
    unique_share: float


class LoadedModel:
    """An artifact ready to answer: the item table and query vectors computed once."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.model = artifact.model
        self.vocabulary = artifact.vocabulary
        with torch.no_grad():
            self.item_vectors = self.model.items.table()  # row 0: padding
        self.popular = np.argsort(-artifact.popularity[1:], kind="stable") + 1  # item indices, most first
        self.outcomes = tuple(artifact.manifest["outcomes"])
        self.max_len = self.model.config.max_len

    @classmethod
    def load(cls, path: Path) -> LoadedModel:
        return cls(load_artifact(path))

    @property
    def version(self) -> str:
        return self.artifact.version

    def index_of(self, raw_ids: np.ndarray) -> np.ndarray:
        return item_indices(self.artifact.item_ids, raw_ids)

    def indexed(self, history: RawHistory) -> IndexedHistory:
        """The history with item indices for raw ids; items the artifact does not know are dropped."""
        items = self.index_of(history.item_ids)
        known = items > 0
        return IndexedHistory(
            items[known], history.actions[known], history.surfaces[known], history.times_ms[known]
        )

    def context_vector(self, request: RecommendRequest) -> torch.Tensor | None:
        """The request's context token (C,): its subject item's vector when it names one (None when the
        artifact does not know that item), else its search query's vector (None when no items define it)."""
        if request.subject_item_id is not None:
            vectors, present = context_vectors(
                self.item_vectors, subjects=self.index_of(np.array([request.subject_item_id]))
            )
        elif request.query_id is not None:
            vectors, present = context_vectors(
                self.item_vectors,
                query_ids=np.array([request.query_id]),
                query_items=self.artifact.query_items,
            )
        else:
            return None
        return vectors[0] if present[0] else None


def sequence_history(sequence: UserSequence) -> RawHistory:
    return RawHistory(
        np.asarray(sequence.item_ids, dtype=np.int64),
        np.asarray(sequence.actions, dtype=np.int64),
        np.asarray(sequence.surfaces, dtype=np.int64),
        np.asarray(sequence.event_times_ms, dtype=np.int64),
    )


def pairwise_distance(vectors: torch.Tensor) -> float:
    """Mean cosine distance over pairs of distinct returned items (unit vectors)."""
    n = len(vectors)
    if n < 2:
        return 0.0
    total = vectors.sum(dim=0)
    similarity_sum = float(total @ total) - n  # sum over i != j of cos(i, j)
    return 1.0 - similarity_sum / (n * (n - 1))


class Recommender:
    """Answers requests for every surface. Every request is answered by one model from start to end: the
    caller takes `current` once and passes it to `limits` and `recommend`, so that `swap` (atomic) never
    splits a request in flight between two artifacts."""

    def __init__(self, settings: ServeSettings, model: LoadedModel, sequences=None) -> None:
        self.settings = settings
        self.current = model
        self.sequences = sequences  # a featurestore SequenceStore, or None (explicit histories only)

    def swap(self, model: LoadedModel) -> None:
        self.current = model

    def limits(self, model: LoadedModel) -> Limits:
        outcomes, shares = default_budget(model)
        return Limits(
            outcomes=model.outcomes,
            surfaces=model.vocabulary.surfaces,
            actions=model.vocabulary.actions,
            default_outcomes=outcomes,
            default_shares=shares,
            default_k=self.settings.default_k,
            max_k=self.settings.max_k,
            default_steps=self.settings.default_steps,
            max_steps=model.model.config.max_decode_steps,
            max_history=self.settings.max_history,
            max_instances=self.settings.max_instances,
            max_request_queries=self.settings.max_request_queries,
            max_request_items=self.settings.max_request_items,
        )

    def read_histories(self, requests: list[RecommendRequest]) -> list[RawHistory | None]:
        """Each request's explicit history, else its user's stored one (one read for the batch)."""
        wanted = [r.user_id for r in requests if r.history is None and r.user_id is not None]
        stored = dict(zip(wanted, self.read_histories_for(wanted), strict=True))
        return [r.history if r.history is not None else stored.get(r.user_id) for r in requests]

    def read_histories_for(self, user_ids: list[int]) -> list[RawHistory | None]:
        stored = self.sequences.read(user_ids) if (user_ids and self.sequences is not None) else {}
        return [sequence_history(stored[u]) if u in stored else None for u in user_ids]

    def recommend(
        self, model: LoadedModel, request: RecommendRequest, surface: str, history: RawHistory | None
    ) -> Recommendation:
        """The answer of `model` (the request's snapshot, or a new artifact warming up) to one request."""
        return self.recommend_many(model, [request], surface, [history])[0]

    def recommend_many(
        self,
        model: LoadedModel,
        requests: list[RecommendRequest],
        surface: str,
        histories: list[RawHistory | None],
    ) -> list[Recommendation]:
        """The answers to several requests of one surface at once: requests that generate alike (same
        outcomes, steps, with or without context) share one prefill, one decode and one index search; each
        answer equals the one `recommend` gives alone. Stage timings are the shared stages' times."""
        started = time.perf_counter()
        prepared = [_Prepared.of(model, r, h) for r, h in zip(requests, histories, strict=True)]
        found: list[Candidates | None] = [None] * len(requests)
        timings: list[dict[str, float]] = [{} for _ in requests]
        groups: dict[tuple, list[int]] = {}
        for row, (request, p) in enumerate(zip(requests, prepared, strict=True)):
            if not len(p.items) and p.context is None:
                found[row] = self._popular(model, request, p.seen)
            else:
                groups.setdefault((request.outcomes, request.steps, p.context is None), []).append(row)
        for rows in groups.values():
            shared: dict[str, float] = {}
            answers = self._generate(
                model, [requests[r] for r in rows], surface, [prepared[r] for r in rows], shared
            )
            for row, answer in zip(rows, answers, strict=True):
                found[row], timings[row] = answer, dict(shared)
        answers = []
        for p, candidates, stage_times in zip(prepared, found, timings, strict=True):
            stage_times["total"] = time.perf_counter() - started
            answers.append(
                Recommendation(
                    item_ids=model.artifact.item_ids[candidates.items - 1],
                    scores=candidates.scores,
                    outcomes=candidates.outcomes,
                    steps=candidates.steps,
                    cold_start=not len(p.items),
                    context_used=p.context is not None,
                    model_version=model.version,
                    unique_share=candidates.unique_share,
                    pairwise_distance=pairwise_distance(model.item_vectors[candidates.items]),
                    staleness_s=p.staleness_s,
                    timings=stage_times,
                )
            )
        return answers

    def _generate(
        self,
        model: LoadedModel,
        requests: list[RecommendRequest],  # alike: same outcomes and steps, all with or all without context
        surface: str,
        prepared: list[_Prepared],
        timings: dict[str, float],
    ) -> list[Candidates]:
        surface_code = model.vocabulary.surface_code(surface)
        head = surface if surface in model.model.heads else "shared"
        first = requests[0]
        batch = _history_batch([p.history for p in prepared], model.max_len, [p.now_ms for p in prepared])
        codes = [model.vocabulary.action_code(o) for o in first.outcomes]
        contexts = None if prepared[0].context is None else torch.stack([p.context for p in prepared])
        with torch.no_grad():
            queries = generate_queries(
                model.model,
                batch,
                surface_code,
                codes,
                first.steps,
                torch.tensor([p.now_ms for p in prepared]),
                head,
                context=contexts,
                timings=timings,
                item_table=model.item_vectors,
            ).numpy()  # (B, steps, O, K, C)
        searched = time.perf_counter()
        plans = [
            plan_queries(q, codes, list(r.shares), r.k, self.settings.merge_threshold)
            for q, r in zip(queries, requests, strict=True)
        ]
        searches = Searches(
            model.artifact.index,
            plans,
            [r.k for r in requests],
            [p.seen for p in prepared],
            self.settings.overfetch,
        )
        names = model.vocabulary.actions
        candidates = []
        for request, plan, p, search in zip(requests, plans, prepared, searches, strict=True):
            found = retrieve(model.artifact.index, plan, request.k, p.seen, self.settings.overfetch, search)
            candidates.append(
                Candidates(
                    items=found.items,
                    scores=found.scores,
                    outcomes=[names[o] for o in found.outcomes],
                    steps=found.steps,
                    unique_share=found.unique_share,
                )
            )
        timings["search"] = time.perf_counter() - searched
        return candidates

    def _popular(self, model: LoadedModel, request: RecommendRequest, seen: np.ndarray) -> Candidates:
        candidates = model.popular[: request.k + len(seen)]
        picked = candidates[~np.isin(candidates, seen)][: request.k]
        counts = model.artifact.popularity[picked].astype(np.float32)
        return Candidates(
            items=picked,
            scores=counts / max(float(counts.max(initial=0)), 1.0),
            outcomes=["popular"] * len(picked),
            steps=np.full(len(picked), -1),
            unique_share=1.0,
        )


def default_budget(model: LoadedModel) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The artifact's outcome mix (manifest "outcome_mix", else an even split over its outcomes)."""
    mix = model.artifact.manifest.get("outcome_mix") or {o: 1 / len(model.outcomes) for o in model.outcomes}
    ordered = sorted(mix, key=lambda o: -mix[o])
    return tuple(ordered), tuple(float(mix[o]) for o in ordered)


def _history_batch(histories: list[IndexedHistory | None], max_len: int, now_ms: list[int]) -> HistoryBatch:
    """Rows of the newest max_len events, left-padded to the longest (a row without events: padding at its
    request time; the model is padding-invariant, so a row answers as it would alone)."""
    width = max([1] + [min(len(h.items), max_len) for h in histories if h is not None])
    columns = [np.zeros((len(histories), width), dtype=np.int64) for _ in range(4)]
    for row, (history, now) in enumerate(zip(histories, now_ms, strict=True)):
        columns[3][row] = now
        if history is None or not len(history.items):
            continue
        parts = (history.items, history.actions, history.surfaces, history.times_ms)
        for column, part in zip(columns, parts, strict=True):
            tail = part[-max_len:]
            column[row, width - len(tail) :] = tail
    return HistoryBatch(*(torch.from_numpy(column) for column in columns))
