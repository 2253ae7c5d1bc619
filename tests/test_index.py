"""The item index: exact for small catalogs, chosen by measured recall and search time for large ones, and its
search parameters kept through an artifact's save and load."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from pinrec.model import index as item_index
from pinrec.model.index import CANDIDATES, IVF_PROBES, IndexSettings, ItemIndex, build_index, recall_at


def _clustered(count: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit item vectors around 20 centres, and queries near some of the items."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    vectors = centres[rng.integers(0, 20, count)] + 0.3 * rng.normal(size=(count, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    queries = vectors[:200] + 0.1 * rng.normal(size=(200, dim)).astype(np.float32)
    return vectors, queries


def _truth(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    return exact.search(queries, 100)[1]


def test_small_catalogs_are_searched_exactly():
    vectors, _ = _clustered(2000)
    index = build_index(vectors)
    assert index.kind == "exact" and index.recall_at_100 == 1.0 and index.params == {}
    scores, items = index.search(vectors[:3], 5)
    assert (items[:, 0] == [1, 2, 3]).all() and scores[:, 0] == pytest.approx(1.0, abs=1e-5)
    _, padded = index.search(vectors[:1], 5000)  # more than the catalog: capped, never row -1 -> item 0
    assert padded.shape == (1, 2000) and padded.min() >= 1


def test_ivf_index_probes_enough_lists_to_reach_its_target_recall():
    vectors, queries = _clustered(5000)
    index = build_index(vectors, IndexSettings(kind="ivf", ivf_lists=64, target_recall=0.95), queries=queries)
    assert index.kind == "ivf" and index.recall_at_100 >= 0.95
    assert index.index.nprobe in IVF_PROBES and index.index.nprobe <= 64


def test_a_large_catalog_gets_the_fastest_candidate_that_reaches_the_target(monkeypatch):
    monkeypatch.setattr(item_index, "EXACT_UP_TO", 1000)
    vectors, queries = _clustered(20_000)
    index = build_index(vectors, IndexSettings(target_recall=0.95), queries=queries)

    assert index.kind in CANDIDATES and index.kind != "exact"  # an approximate index does it for less
    assert {m.kind for m in index.measured} >= {"exact", index.kind}
    reached = [m for m in index.measured if m.recall_at_100 >= 0.95]
    chosen = next(m for m in reached if m.kind == index.kind and m.params == index.params)
    assert chosen.search_ms == min(m.search_ms for m in reached)
    # The recall it claims holds for the index as returned, with its parameters set.
    assert recall_at(index.index, queries, _truth(vectors, queries)) == pytest.approx(index.recall_at_100)
    assert index.recall_at_100 >= 0.95 and "12 queries x top 256" in index.timed_on


@pytest.mark.parametrize("kind", ["ivf", "pq-refine"])
def test_save_and_load_keep_the_search_parameters(kind, tmp_path):
    vectors, queries = _clustered(5000)
    built = build_index(vectors, IndexSettings(kind=kind, ivf_lists=64, target_recall=0.99), queries=queries)
    assert built.kind == kind and set(built.params) == {CANDIDATES[kind].param}
    faiss.write_index(built.index, str(tmp_path / "index.faiss"))
    manifest = json.loads(json.dumps(built.manifest()))  # what the artifact manifest keeps

    read = faiss.read_index(str(tmp_path / "index.faiss"))
    set_elsewhere = {"nprobe": 1} if kind == "ivf" else {"k_factor_rf": 1}
    item_index.set_params(read, set_elsewhere)  # the file's values must not be what restores them
    loaded = ItemIndex.restore(read, manifest)

    assert (loaded.kind, loaded.recall_at_100, loaded.params) == (kind, built.recall_at_100, built.params)
    assert loaded.search(queries, 50)[1].tolist() == built.search(queries, 50)[1].tolist()
    assert manifest["measured"][-1]["params"] == built.params


def test_manifests_that_kept_only_nprobe_still_restore_it(tmp_path):
    vectors, _ = _clustered(3000)
    built = build_index(vectors, IndexSettings(kind="ivf", ivf_lists=32))
    faiss.write_index(built.index, str(tmp_path / "index.faiss"))
    read = faiss.read_index(str(tmp_path / "index.faiss"))
    read.nprobe = 1
    old = {"kind": "ivf", "recall_at_100": 0.97, "size": 3000, "nprobe": 16}
    loaded = ItemIndex.restore(read, old)
    assert loaded.index.nprobe == 16 and loaded.params == {"nprobe": 16}
