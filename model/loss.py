"""The retrieval losses (method §4): softmax over cosine scores with a temperature, either over the whole
catalog (cheap up to some 10^5 items on CPU; what the published leaders on the public datasets train with)
or sampled: in-batch and random negatives with logQ correction.

Candidates of a batch: every distinct target item of the batch plus `random_negatives` items drawn uniformly.
Q(c), the chance that item c is among the candidates, is the chance that it is one of the batch's n targets
(1 - (1 - f_c)^n for its training frequency f_c) plus the chance of a uniform draw (R / V); every score,
the positive's included, is corrected by -log Q(c) so that popular items are not pushed down merely for
being sampled often. Hard negatives (finetuning: shown but not engaged) are added per query, uncorrected:
they are not sampled, they are given.

Under data-parallel training the batch is the global one (model.distributed): the candidates are the
distinct targets of every process's predictions, and each loss is this process's share of the global mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pinrec.model.distributed import current, global_mean


def item_log_frequency(counts: torch.Tensor) -> torch.Tensor:
    """log f_c of items 0..V (0 is padding), from positive counts with add-one smoothing."""
    frequency = (counts.double() + 1) / (counts.sum().double() + len(counts))
    return frequency.log().float()


def sampled_softmax_loss(
    queries: torch.Tensor,  # (N, C) L2-normalised
    targets: torch.Tensor,  # (N,) item indices >= 1
    item_vectors,  # callable: item indices (M,) -> (M, C) L2-normalised embeddings
    log_frequency: torch.Tensor,  # (V + 1,)
    random_negatives: int,
    temperature: float,
    generator: torch.Generator | None = None,
    hard_negatives: torch.Tensor | None = None,  # (N, H) item indices, 0 = none
    weights: torch.Tensor | None = None,  # (N,) per-prediction loss weights (default: all 1)
) -> torch.Tensor:
    num_items = len(log_frequency) - 1
    every_target = current().gather(targets)  # the global batch's
    in_batch = torch.unique(every_target)  # sorted
    # Drawn on the CPU (the generator's), so that every device draws alike; used where the queries are.
    sampled = torch.randint(1, num_items + 1, (random_negatives,), generator=generator).to(queries.device)
    candidates = torch.cat([in_batch, sampled])  # (M,)
    n = len(every_target)
    in_batch_chance = -torch.expm1(n * torch.log1p(-log_frequency[candidates].exp().clamp(max=1 - 1e-7)))
    log_q = torch.log(in_batch_chance + random_negatives / num_items)

    vectors = item_vectors(candidates)  # (M, C)
    logits = queries @ vectors.T / temperature - log_q  # (N, M)
    labels = torch.searchsorted(in_batch, targets)  # the positive's column
    # A random draw of the positive item is not a negative.
    duplicate = sampled[None, :] == targets[:, None]  # (N, R)
    logits[:, len(in_batch) :] = logits[:, len(in_batch) :].masked_fill(duplicate, float("-inf"))
    if hard_negatives is not None and hard_negatives.shape[1]:
        hard = (queries[:, None, :] * item_vectors(hard_negatives)).sum(-1) / temperature  # (N, H)
        hard = hard.masked_fill((hard_negatives == 0) | (hard_negatives == targets[:, None]), float("-inf"))
        logits = torch.cat([logits, hard], dim=1)
    return global_mean(F.cross_entropy(logits, labels, reduction="none"), weights)


def full_softmax_loss(
    queries: torch.Tensor,  # (N, C) L2-normalised
    targets: torch.Tensor,  # (N,) item indices >= 1
    all_items: torch.Tensor,  # (V, C) L2-normalised vectors of items 1..V
    temperature: float,
    weights: torch.Tensor | None = None,  # (N,)
) -> torch.Tensor:
    """Cross-entropy of each target against every item of the catalog."""
    logits = queries @ all_items.T / temperature  # (N, V)
    return global_mean(F.cross_entropy(logits, targets - 1, reduction="none"), weights)
