"""The item index: faiss inner-product search over L2-normalised item embeddings (so scores are cosines).

Row r of the index is item index r + 1. Small catalogs get an exact flat index. A large one gets the index
chosen by measurement when it is built: each candidate below has one search parameter, raised step by step
until the candidate's recall@100 against exact search on the model's own queries reaches target_recall; a
request-sized batch of queries is timed at each step, and the fastest candidate that reaches the target is
kept. Exact search is a candidate too, so the target is always met; what was measured goes to the manifest.

Candidates (measured at 1M items x 64 dims on request queries of a model trained for 3 minutes, 2 cores):
- "ivf": IVF-Flat, 4 sqrt(V) lists, `nprobe` of them scanned. Cheapest where the model's queries fall near
  clusters of items. On that model it needed a quarter to half of the lists for recall 0.95 (0.90 at 1024
  of 4000, 0.98 at 2048): its queries sit far from every item (best cosine about 0.5), so their top 100 lie
  scattered over many lists.
- "pq-refine": a scan of the whole catalog in 4-bit product-quantised codes (faiss fast scan, one sub-
  quantiser per dimension), whose top `k_factor_rf` x k are re-ranked by exact inner product. Its cost does
  not depend on where the queries fall: recall 0.97 at k_factor_rf 2 there, about 1.2 ms per query on one
  core.
- "exact": the flat index, recall 1 (about 13 ms per query at 1M items on one core).
Left out by measurement there: more IVF lists (16k lists: 9 minutes of k-means, and no faster for the same
recall) and HNSW (M 32 built in 3 minutes and reached recall 0.60 at efSearch 2048: the scattered top 100
are not neighbours of each other in the graph).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

log = logging.getLogger(__name__)

EXACT_UP_TO = 50_000  # items; exact search of a request's queries stays within a few ms (about 75 ms at 1M)


@dataclass(frozen=True)
class IndexSettings:
    kind: str = "auto"  # "auto" (exact up to EXACT_UP_TO items, else measured) or a key of CANDIDATES
    target_recall: float = 0.95  # recall@100 against exact search on the model's queries
    recall_queries: int = 500  # sample queries for the recall measurement at build time
    ivf_lists: int = 0  # 0 = 4 * sqrt(V)
    timed_queries: int = 12  # queries per timed search: a request's, about (6 steps x 2 outcomes, merged)
    timed_k: int = 256  # items per query in a timed search: the server fetches past the user's history
    timed_repeats: int = 5  # the fastest of this many timed searches (a busy machine only adds time)


IVF_PROBES = (8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
REFINE_FACTORS = (1, 2, 4, 8, 16)


@dataclass
class Measurement:
    """One setting of one candidate, measured at build time."""

    kind: str
    params: dict[str, int]  # faiss ParameterSpace names and values (nprobe, k_factor_rf)
    recall_at_100: float
    search_ms: float  # time of one timed batch (IndexSettings.timed_queries x timed_k), fastest of repeats


@dataclass
class ItemIndex:
    index: faiss.Index
    kind: str
    recall_at_100: float  # against exact search, on sample queries; 1.0 for the exact index
    params: dict[str, int] = field(default_factory=dict)  # search parameters, restored on load
    measured: list[Measurement] = field(default_factory=list)  # every setting tried at build time
    timed_on: str = ""  # what a measured search_ms is the time of

    @property
    def size(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and item indices (0 where fewer than k items exist), each (Q, k)."""
        k = max(1, min(k, self.size))
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, np.where(rows >= 0, rows + 1, 0)

    def manifest(self) -> dict:
        """What the artifact manifest keeps of the index: its choice and every measurement behind it."""
        return {
            "kind": self.kind,
            "recall_at_100": self.recall_at_100,
            "size": self.size,
            "params": self.params,
            "measured": [asdict(m) for m in self.measured],
            "timed_on": self.timed_on,
        }

    @classmethod
    def restore(cls, index: faiss.Index, manifest: dict) -> ItemIndex:
        """The index read from an artifact, with its search parameters as the manifest recorded them (older
        manifests kept only nprobe)."""
        params = manifest.get("params")
        if params is None:
            params = {"nprobe": manifest["nprobe"]} if manifest.get("nprobe") else {}
        set_params(index, params)
        return cls(index, manifest["kind"], manifest["recall_at_100"], dict(params))


def set_params(index: faiss.Index, params: dict[str, int]) -> None:
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, value)


@dataclass(frozen=True)
class Candidate:
    build: Callable[[np.ndarray, IndexSettings, np.random.Generator], faiss.Index]  # trained and filled
    param: str | None  # the faiss parameter swept from cheap to costly
    values: tuple[int, ...]


def _exact(vectors: np.ndarray, *_) -> faiss.Index:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def _ivf(vectors: np.ndarray, settings: IndexSettings, rng: np.random.Generator) -> faiss.Index:
    count, dim = vectors.shape
    lists = settings.ivf_lists or int(4 * math.sqrt(count))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.train(_sample(vectors, lists * 64, rng))
    index.add(vectors)
    return index


def _pq_refine(vectors: np.ndarray, settings: IndexSettings, rng: np.random.Generator) -> faiss.Index:
    dim = vectors.shape[1]
    codes = faiss.IndexPQFastScan(dim, dim, 4, faiss.METRIC_INNER_PRODUCT)  # 16 levels per dimension
    index = faiss.IndexRefineFlat(codes)
    index.train(_sample(vectors, 100_000, rng))
    index.add(vectors)
    return index


CANDIDATES = {
    "exact": Candidate(_exact, None, (0,)),
    "pq-refine": Candidate(_pq_refine, "k_factor_rf", REFINE_FACTORS),
    "ivf": Candidate(_ivf, "nprobe", IVF_PROBES),
}


def build_index(
    vectors: np.ndarray,
    settings: IndexSettings = IndexSettings(),
    seed: int = 0,
    queries: np.ndarray | None = None,  # the model's own queries, to measure recall on (else perturbed items)
) -> ItemIndex:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count = len(vectors)
    kind = settings.kind
    if kind == "exact" or (kind == "auto" and count <= EXACT_UP_TO):
        return ItemIndex(_exact(vectors), "exact", 1.0)
    if kind != "auto" and kind not in CANDIDATES:
        raise ValueError(f"unknown index kind {kind!r}; use auto or one of {', '.join(CANDIDATES)}")
    rng = np.random.default_rng(seed)
    probes = _recall_queries(vectors, queries, settings.recall_queries, rng)
    exact = _exact(vectors)
    truth = exact.search(probes, 100)[1]
    timed = probes[np.arange(settings.timed_queries) % len(probes)]
    best, best_ms = None, math.inf
    measured: list[Measurement] = []
    for name in CANDIDATES if kind == "auto" else (kind,):
        started = time.perf_counter()
        index = exact if name == "exact" else CANDIDATES[name].build(vectors, settings, rng)
        log.info("index candidate %s built in %.1f s", name, time.perf_counter() - started)
        reached = _sweep(name, index, probes, truth, timed, settings, best_ms, measured)
        if reached is not None:
            best, best_ms = ItemIndex(index, name, reached.recall_at_100, reached.params), reached.search_ms
    if best is None:  # one kind asked for, and it never reached the target: its most exact setting
        last = measured[-1]
        log.warning("%s index reached recall@100 %.4f only", kind, last.recall_at_100)
        best = ItemIndex(index, kind, last.recall_at_100, last.params)
    set_params(best.index, best.params)
    best.measured = measured
    best.timed_on = f"{len(timed)} queries x top {min(settings.timed_k, count)}, one faiss thread"
    log.info("index over %d items: %s %s, recall@100 %.4f", count, best.kind, best.params, best.recall_at_100)
    return best


def _sweep(
    name: str,
    index: faiss.Index,
    probes: np.ndarray,
    truth: np.ndarray,
    timed: np.ndarray,
    settings: IndexSettings,
    bound_ms: float,  # search time of the best choice so far
    measured: list[Measurement],
) -> Measurement | None:
    """The cheapest setting of one candidate that reaches the target recall faster than bound_ms, or None.
    Settings go from cheap to costly, so the sweep stops at the first one slower than the bound."""
    candidate = CANDIDATES[name]
    for value in candidate.values:
        if candidate.param == "nprobe" and value > faiss.extract_index_ivf(index).nlist:
            break
        params = {candidate.param: value} if candidate.param else {}
        set_params(index, params)
        recall = recall_at(index, probes, truth) if name != "exact" else 1.0
        search_ms = _time_search(index, timed, settings)
        measured.append(Measurement(name, params, round(recall, 4), round(search_ms, 3)))
        log.info("index candidate %s %s: recall@100 %.4f, %.2f ms per batch", name, params, recall, search_ms)
        if search_ms >= bound_ms:
            return None
        if recall >= settings.target_recall:
            return measured[-1]
    return None


def _time_search(index: faiss.Index, queries: np.ndarray, settings: IndexSettings) -> float:
    """Milliseconds of one search of the timed batch on one faiss thread (the work it takes; parallel regions
    on a busy machine mostly time the other processes): the fastest of the repeats after a warm-up search."""
    k = min(settings.timed_k, index.ntotal)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.search(queries, k)
        times = []
        for _ in range(settings.timed_repeats):
            started = time.perf_counter()
            index.search(queries, k)
            times.append(time.perf_counter() - started)
    finally:
        faiss.omp_set_num_threads(threads)
    return min(times) * 1000


def _sample(vectors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return vectors[rng.choice(len(vectors), size=min(count, len(vectors)), replace=False)]


def _recall_queries(vectors, queries, count: int, rng: np.random.Generator) -> np.ndarray:
    """The given queries (a sample of them), or perturbed item vectors: near, not on, items."""
    if queries is not None and len(queries):
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, vectors.shape[1])
        return np.ascontiguousarray(_sample(queries, count, rng))
    picked = _sample(vectors, count, rng)
    noisy = picked + rng.normal(scale=0.05, size=picked.shape).astype(np.float32)
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def recall_at(approximate, queries: np.ndarray, truth: np.ndarray) -> float:
    """Share of the exact top-k (truth: item rows, (Q, k)) that the approximate index also returns."""
    _, found = approximate.search(queries, truth.shape[1])
    hits = sum(len(np.intersect1d(t, f)) for t, f in zip(truth, found, strict=True))
    return hits / truth.size
