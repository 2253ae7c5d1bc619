"""The item index: faiss inner-product search over L2-normalised item embeddings (so scores are cosines).

Row r of the index is item index r + 1. Small catalogs get an exact flat index; large ones an IVF index
(recall against exact search is measured when it is built and kept in the artifact manifest).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import faiss
import numpy as np

log = logging.getLogger(__name__)

EXACT_UP_TO = 200_000  # items; above this an approximate index answers in well under a millisecond


@dataclass(frozen=True)
class IndexSettings:
    kind: str = "auto"  # "exact" | "ivf" | "auto" (exact up to EXACT_UP_TO items)
    # IVF: about 4 * sqrt(V) lists; each query scans nprobe of them, the smallest of IVF_PROBES that reaches
    # target_recall (recall@100 against exact search on sample queries) at build time, or the last one that
    # still gained MIN_RECALL_GAIN (ours).
    ivf_lists: int = 0  # 0 = 4 * sqrt(V)
    target_recall: float = 0.95
    recall_queries: int = 500  # sample queries for the recall measurement at build time


IVF_PROBES = (32, 48, 64, 96, 128, 192, 256, 384, 512)
MIN_RECALL_GAIN = 0.02  # below the target, a larger nprobe must gain this much recall to be chosen (ours)


@dataclass
class ItemIndex:
    index: faiss.Index
    kind: str
    recall_at_100: float  # against exact search, on sample queries; 1.0 for the exact index

    @property
    def size(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and item indices (0 where fewer than k items exist), each (Q, k)."""
        k = max(1, min(k, self.size))
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, np.where(rows >= 0, rows + 1, 0)


def build_index(
    vectors: np.ndarray,
    settings: IndexSettings = IndexSettings(),
    seed: int = 0,
    queries: np.ndarray | None = None,  # the model's own queries, to measure recall on (else perturbed items)
) -> ItemIndex:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count, dim = vectors.shape
    kind = settings.kind if settings.kind != "auto" else ("exact" if count <= EXACT_UP_TO else "ivf")
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    if kind == "exact":
        return ItemIndex(exact, "exact", 1.0)
    if kind != "ivf":
        raise ValueError(f"unknown index kind {kind!r}; use exact, ivf or auto")
    lists = settings.ivf_lists or int(4 * math.sqrt(count))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(count, size=min(count, lists * 64), replace=False)]
    index.train(sample)
    index.add(vectors)
    probes = _recall_queries(vectors, queries, settings.recall_queries, rng)
    _, truth = exact.search(probes, 100)
    recall, previous = 0.0, None
    for nprobe in (p for p in IVF_PROBES if p <= lists):
        index.nprobe = nprobe
        recall = recall_at(index, probes, truth)
        if recall >= settings.target_recall:
            break
        if previous is not None and recall - previous[1] < MIN_RECALL_GAIN:
            # Scanning more lists no longer pays (near-tied items spread over many lists): keep the cheaper.
            index.nprobe, recall = previous
            break
        previous = (nprobe, recall)
    log.info(
        "IVF index over %d items: %d lists, nprobe %d, recall@100 %.4f", count, lists, index.nprobe, recall
    )
    return ItemIndex(index, "ivf", recall)


def _recall_queries(vectors, queries, count: int, rng: np.random.Generator) -> np.ndarray:
    """The given queries (a sample of them), or perturbed item vectors: near, not on, items."""
    if queries is not None and len(queries):
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, vectors.shape[1])
        return np.ascontiguousarray(
            queries[rng.choice(len(queries), size=min(count, len(queries)), replace=False)]
        )
    picked = vectors[rng.choice(len(vectors), size=min(count, len(vectors)), replace=False)]
    noisy = picked + rng.normal(scale=0.05, size=picked.shape).astype(np.float32)
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def recall_at(approximate, queries: np.ndarray, truth: np.ndarray) -> float:
    """Share of the exact top-k (truth: item rows, (Q, k)) that the approximate index also returns."""
    _, found = approximate.search(queries, truth.shape[1])
    hits = sum(len(np.intersect1d(t, f)) for t, f in zip(truth, found, strict=True))
    return hits / truth.size
