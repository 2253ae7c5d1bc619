"""The serving benchmark's in-process phase: the recommender without a server in front (latency per stage),
KV-cache decoding against full recomputation, and the recall of the served approximate index."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from pinrec.bench.report import percentiles
from pinrec.bench.serve.config import ServeBenchConfig

if TYPE_CHECKING:
    import torch

    from pinrec.serving.engine import LoadedModel, Recommender
    from pinrec.serving.request import RawHistory


def measure_in_process(config: ServeBenchConfig, recommender: Recommender, users: list[int]) -> dict:
    """p50 and p99 per stage of a request answered in this process, the stored history read included."""
    from pinrec.serving.request import parse_instance

    model = recommender.current
    stages: dict[str, list[float]] = {}
    for i in range(config.inprocess_requests):
        instance = {"user_id": users[i % len(users)], "k": config.k, "budget": config.outcome_budget}
        instance["steps"] = config.steps
        started = time.perf_counter()
        request = parse_instance(instance, config.surface, recommender.limits(model), int(time.time() * 1000))
        history = recommender.read_histories([request])[0]
        features = time.perf_counter() - started
        answer = recommender.recommend(model, request, config.surface, history)
        timings = {**answer.timings, "features": features, "total": time.perf_counter() - started}
        for stage, seconds in timings.items():
            stages.setdefault(stage, []).append(seconds * 1000)
    return {stage: percentiles(values) for stage, values in stages.items()}


def measure_kv(config: ServeBenchConfig, recommender: Recommender, users: list[int]) -> dict:
    """Query generation with the KV cache against full recomputation at every step (medians)."""
    model = recommender.current
    histories = recommender.read_histories_for(users[: config.kv_requests])
    phases = {(cache, phase): [] for cache in (True, False) for phase in ("prefill", "decode", "total")}
    for history in histories:
        generate = _query_generator(config, model, history)
        for use_cache in (True, False):
            timings: dict[str, float] = {}
            started = time.perf_counter()
            generate(use_cache=use_cache, timings=timings)
            timings["total"] = time.perf_counter() - started
            for phase, seconds in timings.items():
                phases[use_cache, phase].append(seconds * 1000)
    median = {key: float(np.median(values)) for key, values in phases.items()}
    return {
        "kv_decode_ms": round(median[True, "decode"], 3),
        "full_recompute_decode_ms": round(median[False, "decode"], 3),
        # The decode phase (every step after the history is encoded): recomputing the whole sequence at
        # each step against appending one token to the KV cache.
        "kv_speedup": round(median[False, "decode"] / median[True, "decode"], 2),
        # The whole generation, the shared prefill included.
        "generation_ms": round(median[True, "total"], 3),
        "full_recompute_generation_ms": round(median[False, "total"], 3),
        "kv_speedup_with_prefill": round(median[False, "total"] / median[True, "total"], 2),
    }


def measure_index_recall(
    config: ServeBenchConfig, recommender: Recommender, users: list[int], samples: int = 500
) -> float:
    """Recall@100 of the served index against exact search, on query vectors the model generated."""
    import faiss

    from pinrec.model.index import recall_at

    model = recommender.current
    queries = []
    for history in recommender.read_histories_for(users[:50]):
        q = _query_generator(config, model, history)()
        queries.append(q.reshape(-1, q.shape[-1]).numpy())
    queries = np.concatenate(queries)
    queries = queries[
        np.random.default_rng(config.seed).choice(len(queries), min(samples, len(queries)), replace=False)
    ]
    exact = faiss.IndexFlatIP(queries.shape[1])
    exact.add(model.item_vectors[1:].numpy())
    _, truth = exact.search(queries, 100)
    return recall_at(model.artifact.index.index, queries, truth)


def _query_generator(
    config: ServeBenchConfig, model: LoadedModel, history: RawHistory | None
) -> Callable[..., torch.Tensor]:
    """generate_queries for one stored history, on the benchmark's surface and outcome budget; keyword
    arguments (use_cache, timings) pass through. The history batch is built here, outside any timing."""
    from pinrec.model.generate import generate_queries
    from pinrec.serving.engine import _history_batch

    batch = _history_batch([model.indexed(history)], model.max_len, [int(time.time() * 1000)])
    return partial(
        generate_queries,
        model.model,
        batch,
        model.vocabulary.surface_code(config.surface),
        [model.vocabulary.action_code(o) for o in config.outcome_budget],
        config.steps,
        batch.times[:, -1] + 1,  # now: just after the last event
        item_table=model.item_vectors,
    )
