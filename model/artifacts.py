"""Model artifacts (architecture §4.3): an immutable, versioned directory.

    manifest.json          config, vocabularies, surfaces, outcomes, offsets, data fingerprint, metrics, index
    backbone.safetensors   item tower, input embeddings, transformer
    heads/<name>.safetensors   the shared (pretrain) head and one finetuned head per surface
    items.npy              raw item id of each item index 1..V
    popularity.npy         positive actions per item index 0..V in the training log (cold-start answers)
    search_queries.npz     items that define each search query id (the search context, model/data/contexts.py)
    item_embeddings.npy    (V, C) L2-normalised item vectors (what the index holds)
    index.faiss            the faiss index over them (its kind and search parameters: manifest)

Weights are safetensors (no unpickling); a directory is written under a temporary name and renamed, so a
reader never sees a half-written artifact.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from pinrec.featurestore.schema import Vocabulary
from pinrec.model.config import ModelConfig
from pinrec.model.data.contexts import QueryItems, search_query_items
from pinrec.model.data.prepare import PreparedData
from pinrec.model.generate import GenerationSettings, sample_queries
from pinrec.model.index import IndexSettings, ItemIndex, build_index
from pinrec.model.manifest import MANIFEST, read_manifest
from pinrec.model.network import PinRecModel

FORMAT_VERSION = 2  # 2: items enter as scaled unit vectors, outcome table has an 'any outcome' row


@dataclass
class Artifact:
    path: Path
    manifest: dict
    model: PinRecModel
    item_ids: np.ndarray  # raw id of item index i + 1
    index: ItemIndex
    vocabulary: Vocabulary
    popularity: np.ndarray  # (V + 1,) positive actions per item index in the training log
    query_items: QueryItems

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def heads(self) -> list[str]:
        return list(self.model.heads.keys())


def data_fingerprint(events: pd.DataFrame) -> str:
    """A digest of the training events (identifies the data an artifact was trained on)."""
    digest = hashlib.blake2b(digest_size=16)
    for column in ("user_id", "item_id", "ts_ms"):
        digest.update(np.ascontiguousarray(events[column].to_numpy(dtype=np.int64)).tobytes())
    digest.update("\n".join(events["action"].astype(str)).encode())
    return digest.hexdigest()


def save_artifact(
    path: Path,
    model: PinRecModel,
    item_ids: np.ndarray,
    vocabulary: Vocabulary,
    fingerprint: str,
    metrics: dict | None = None,
    index_settings: IndexSettings | None = None,
    extra: dict | None = None,
    popularity: np.ndarray | None = None,
    query_items: QueryItems | None = None,
    index_queries: np.ndarray | None = None,  # the model's queries for training users (index recall)
) -> Path:
    if path.exists():
        raise FileExistsError(f"{path} exists; artifacts are immutable, choose a new directory")
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "heads").mkdir(parents=True)
    model.eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("heads.")}
    save_file(state, partial / "backbone.safetensors")
    for name, head in model.heads.items():
        save_file(
            {k: v.contiguous() for k, v in head.state_dict().items()},
            partial / "heads" / f"{name}.safetensors",
        )
    with torch.no_grad():
        vectors = model.items.all_items().numpy()
    index = build_index(vectors, index_settings or IndexSettings(), queries=index_queries)
    np.save(partial / "items.npy", np.asarray(item_ids, dtype=np.int64))
    np.save(partial / "item_embeddings.npy", vectors)
    counts = popularity if popularity is not None else np.zeros(len(item_ids) + 1, dtype=np.int64)
    np.save(partial / "popularity.npy", np.asarray(counts, dtype=np.int64))
    if query_items is not None:
        query_items.save(partial)
    faiss.write_index(index.index, str(partial / "index.faiss"))
    manifest = {
        "format": FORMAT_VERSION,
        "version": f"{path.name}",
        "created_unix": int(time.time()),
        "config": model.config.to_dict(),
        "actions": list(vocabulary.actions),
        "surfaces": list(vocabulary.surfaces),
        "unsequenced_actions": sorted(vocabulary.unsequenced_actions),
        "outcomes": [a for a in vocabulary.actions if a not in vocabulary.unsequenced_actions],
        "offsets_ms": list(model.config.offsets),
        "heads": list(model.heads.keys()),
        "items": len(item_ids),
        "data_fingerprint": fingerprint,
        "index": {
            **index.manifest(),
            "recall_measured_on": "model queries" if index_queries is not None else "perturbed item vectors",
        },
        "metrics": metrics or {},
        **(extra or {}),
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
    partial.rename(path)
    return path


def save_trained(
    path: Path,
    model: PinRecModel,
    data: PreparedData,
    metrics: dict | None = None,
    decode_steps: int = GenerationSettings.steps,
) -> Path:
    """The artifact of a model trained on `data`: everything the server needs besides the weights comes from
    the training data (its fingerprint, item popularity, search query items, the outcome mix as a request's
    default budget), and the index's recall is measured on the model's own queries of `decode_steps` steps
    for a sample of the training users."""
    return save_artifact(
        path,
        model,
        data.catalog.item_ids,
        data.vocabulary,
        data_fingerprint(data.log.events),
        metrics=metrics,
        extra={"outcome_mix": data.outcome_shares()},
        popularity=data.catalog.counts,
        query_items=search_query_items(data.log, data.catalog, data.vocabulary),
        index_queries=sample_queries(model, data, steps=decode_steps),
    )


def load_artifact(path: Path) -> Artifact:
    manifest = read_manifest(path)
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path} is a format {manifest.get('format')} artifact; this version of pinrec reads format "
            f"{FORMAT_VERSION}: retrain it with `pinrec train`"
        )
    config = ModelConfig.from_dict(manifest["config"])
    state = load_file(path / "backbone.safetensors")
    content = state.get("items.content")
    model = PinRecModel(config, content)
    for name in manifest["heads"]:
        if name != "shared":
            model.add_head(name)
        for key, value in load_file(path / "heads" / f"{name}.safetensors").items():
            state[f"heads.{name}.{key}"] = value
    # Artifacts saved before items had an evidence mask: every item keeps its ID part, as it was trained.
    state.setdefault("items.id_evidence", torch.ones(config.num_items + 1, dtype=torch.bool))
    model.load_state_dict(state)
    model.eval()
    index = faiss.read_index(str(path / "index.faiss"))
    vocabulary = Vocabulary(
        tuple(manifest["actions"]), tuple(manifest["surfaces"]), frozenset(manifest["unsequenced_actions"])
    )
    item_index = ItemIndex.restore(index, manifest["index"])
    item_ids = np.load(path / "items.npy")
    popularity_path = path / "popularity.npy"
    popularity = (
        np.load(popularity_path) if popularity_path.exists() else np.zeros(len(item_ids) + 1, np.int64)
    )
    return Artifact(
        path, manifest, model, item_ids, item_index, vocabulary, popularity, QueryItems.load(path)
    )
