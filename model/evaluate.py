"""Protocol A (leave-one-out, full ranking): one next-item query per user, searched in the faiss index over
every item embedding, items already in the user's history masked; HR@k and NDCG@k. Validation during
training scores the same way with a matrix multiply over every item (no index to build every epoch)."""

from __future__ import annotations

import numpy as np
import torch

from pinrec.model.data.sequences import Examples, Histories, recent_histories
from pinrec.model.index import IndexSettings, ItemIndex, build_index
from pinrec.model.network import PinRecModel

CUTOFFS = (10, 20, 50)


@torch.no_grad()
def item_index(model: PinRecModel, settings: IndexSettings | None = None) -> ItemIndex:
    """The index over every item's embedding; exact unless settings say otherwise (evaluation is exact)."""
    model.eval()
    return build_index(model.items.all_items().numpy(), settings or IndexSettings(kind="exact"))


@torch.no_grad()
def next_queries(
    model: PinRecModel,
    histories: Histories,
    examples: Examples,
    outcome: int,
    surface: int,
    head: str = "shared",
    chunk: int = 1024,
) -> np.ndarray:
    """The "next" query (offset 0) after each example's history, for the given outcome and surface."""
    model.eval()
    device = model.position.weight.device
    out = np.zeros((len(examples), model.config.dim), dtype=np.float32)
    # Similar lengths together: padding costs as much as real tokens.
    order = np.argsort(examples.ends - histories.offsets[examples.rows], kind="stable")
    for first in range(0, len(order), chunk):
        part = order[first : first + chunk]
        inputs = recent_histories(histories, examples.rows[part], examples.ends[part], model.config.max_len)
        hidden, _ = model.encode(**inputs.to(device).to_dict())
        last = hidden[:, -1]  # (B, C): histories are left-padded
        size = (len(part),)
        conditions = [torch.full(size, v, dtype=torch.long, device=device) for v in (outcome, surface, 0)]
        out[part] = model.query(last, *conditions, head=head).cpu().numpy()
    return out


def leave_one_out_metrics(
    index: ItemIndex, queries: np.ndarray, histories: Histories, examples: Examples, chunk: int = 2048
) -> dict[str, float]:
    """HR@k and NDCG@k of the single target of each example; every item of the user's whole history before
    the target is masked (not only the model's max_len window)."""
    if len(examples.targets) != len(examples):
        raise ValueError("leave-one-out metrics need exactly one target per case")
    ranks = np.full(len(examples), np.iinfo(np.int64).max)
    for first in range(0, len(examples), chunk):
        part = slice(first, first + chunk)
        rows, ends, targets = examples.rows[part], examples.ends[part], examples.targets[part]
        starts = histories.offsets[rows]
        depth = int((ends - starts).max()) + max(CUTOFFS)
        _, found = index.search(queries[part], depth)
        for i in range(len(rows)):
            seen = histories.items[starts[i] : ends[i]]
            kept = found[i][(found[i] > 0) & ~np.isin(found[i], seen)][: max(CUTOFFS)]
            hit = np.flatnonzero(kept == histories.items[targets[i]])
            if len(hit):
                ranks[first + i] = hit[0]
    return _cutoff_metrics(ranks)


def _cutoff_metrics(ranks: np.ndarray) -> dict[str, float]:
    """HR@k and NDCG@k from 0-based ranks of single targets."""
    metrics = {}
    for k in CUTOFFS:
        inside = ranks < k
        metrics[f"hr@{k}"] = float(inside.mean()) if len(ranks) else 0.0
        gains = np.where(inside, 1.0 / np.log2(np.minimum(ranks, k) + 2.0), 0.0)
        metrics[f"ndcg@{k}"] = float(gains.mean()) if len(ranks) else 0.0
    return metrics


@torch.no_grad()
def exact_metrics(
    queries: np.ndarray, items: torch.Tensor, histories: Histories, examples: Examples, chunk: int = 1024
) -> dict[str, float]:
    """leave_one_out_metrics by brute force: queries (N, C) scored against every item vector (V, C) of
    items 1..V, items of the user's history before the target masked; a target's rank is the number of
    unmasked items scoring higher (a target the user saw before is a miss, as in the faiss path). Scored
    where the item vectors are (a GPU while training on one)."""
    if len(examples.targets) != len(examples):
        raise ValueError("leave-one-out metrics need exactly one target per case")
    ranks = []
    for first in range(0, len(examples), chunk):
        part = slice(first, first + chunk)
        rows, ends, targets = examples.rows[part], examples.ends[part], examples.targets[part]
        scores = torch.from_numpy(queries[part]).to(items.device) @ items.T  # (B, V)
        starts = histories.offsets[rows]
        lengths = ends - starts
        seen_rows = np.repeat(np.arange(len(rows)), lengths)
        seen_at = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)] or [[]])
        target_items = torch.from_numpy(histories.items[targets] - 1).to(items.device)
        target_scores = scores.gather(1, target_items[:, None])
        seen = (seen_rows, histories.items[seen_at.astype(np.int64)] - 1)
        scores[tuple(torch.from_numpy(axis).to(items.device) for axis in seen)] = -torch.inf
        rank = (scores > target_scores).sum(dim=1)
        masked = scores.gather(1, target_items[:, None])[:, 0] == -torch.inf  # a target seen before: a miss
        ranks.append(torch.where(masked, items.shape[0], rank).cpu().numpy())
    ranks = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    return _cutoff_metrics(ranks)
