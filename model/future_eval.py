"""Protocols B and C: future-window retrieval on held-out users, generated exactly as the server does.

B: unordered Recall@10 (a target counts when it is in the top 10 of any generated query), budgeted
Recall@N (the final list of N items after budget split, merging and dedup), diversity (unique share of what
the queries retrieved; catalog coverage of the final lists over all test users).
C: the whole budget on one outcome; recall on targets of that outcome (matched) against recall on the same
targets when another outcome is asked for (mismatched).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pinrec.model.data.sequences import Examples, Histories, recent_histories
from pinrec.model.generate import GenerationSettings, generate_queries, plan_queries, retrieve
from pinrec.model.index import ItemIndex
from pinrec.model.network import PinRecModel


@dataclass(frozen=True)
class FutureEvalSettings:
    budget: int = 100  # N of the budgeted recall
    unordered_k: int = 10
    generation: GenerationSettings = GenerationSettings()
    chunk: int = 256


def _cases(histories: Histories, examples: Examples, surface: int | None) -> list[tuple[int, np.ndarray]]:
    """(example, target items) pairs; with a surface, only targets on that surface (cases without any are
    dropped)."""
    cases = []
    for i in range(len(examples)):
        positions = examples.targets[examples.target_offsets[i] : examples.target_offsets[i + 1]]
        if surface is not None:
            positions = positions[histories.surfaces[positions] == surface]
        if len(positions):
            cases.append((i, positions))
    return cases


@torch.no_grad()
def _queries(model, histories, examples, picked, surface, outcomes, steps, head) -> np.ndarray:
    rows, ends = examples.rows[picked], examples.ends[picked]
    inputs = recent_histories(histories, rows, ends, model.config.max_len)
    now = torch.from_numpy(histories.times[ends - 1] + 1)
    return generate_queries(model, inputs, surface, outcomes, steps, now, head).numpy()  # (B, S, O, K, C)


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
    cases = _cases(histories, examples, target_surface)
    unordered, budgeted, unique_share, covered = [], [], [], set()
    for first in range(0, len(cases), settings.chunk):
        part = cases[first : first + settings.chunk]
        picked = np.array([i for i, _ in part])
        queries = _queries(
            model, histories, examples, picked, surface, outcomes, settings.generation.steps, head
        )
        for (i, positions), request in zip(part, queries, strict=True):
            targets = np.unique(histories.items[positions])
            seen = histories.items[histories.offsets[examples.rows[i]] : examples.ends[i]]
            flat = request.reshape(-1, request.shape[-1])
            _, found = index.search(flat, settings.unordered_k + len(seen))
            top = set()
            for row in found:
                top.update(row[(row > 0) & ~np.isin(row, seen)][: settings.unordered_k].tolist())
            unordered.append(np.isin(targets, list(top)).mean())
            planned = plan_queries(
                request, outcomes, shares, settings.budget, settings.generation.merge_threshold
            )
            result = retrieve(index, planned, settings.budget, seen, settings.generation.overfetch)
            budgeted.append(np.isin(targets, result.items).mean())
            unique_share.append(result.unique_share)
            covered.update(result.items.tolist())
    return {
        f"recall@{settings.unordered_k}_unordered": float(np.mean(unordered)) if unordered else 0.0,
        f"recall@{settings.budget}_budgeted": float(np.mean(budgeted)) if budgeted else 0.0,
        "diversity_unique_share": float(np.mean(unique_share)) if unique_share else 0.0,
        "catalog_coverage": len(covered) / index.size,
        "cases": len(cases),
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
    matched, mismatched = [], []
    for first in range(0, len(cases), settings.chunk):
        part = cases[first : first + settings.chunk]
        picked = np.array([i for i, _ in part])
        lists = {}
        for outcome in outcomes:
            queries = _queries(
                model, histories, examples, picked, surface, [outcome], settings.generation.steps, head
            )
            for (i, _), request in zip(part, queries, strict=True):
                seen = histories.items[histories.offsets[examples.rows[i]] : examples.ends[i]]
                planned = plan_queries(
                    request, [outcome], [1.0], settings.budget, settings.generation.merge_threshold
                )
                lists[i, outcome] = retrieve(
                    index, planned, settings.budget, seen, settings.generation.overfetch
                ).items
        for i, positions in part:
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
