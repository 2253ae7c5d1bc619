"""`pinrec bench serve` (protocol D): latency of the recommender in-process, over REST (v1, v2) and gRPC at a
fixed request rate, against a no-op KServe model measured in the same run; KV-cache decode against full
recomputation; the maximum sustained rate; recall@100 of the approximate index on real request queries.

The artifact is trained here on a synthetic world with a large catalog (default 1M items, the default model
configuration with histories of 200), unless --artifact names one.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import requests

from pinrec.bench.report import print_table, write_json
from pinrec.server_process import ServerProcess, launch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeBenchConfig:
    artifact: Path | None = None  # an existing artifact; default: train one on a synthetic world
    items: int = 1_000_000  # catalog of the synthetic world
    users: int = 2_000
    days: int = 14
    train_minutes: float = 3.0
    history: int = 200  # events per user in the feature store (and the model's max_len)
    steps: int = 6
    k: int = 100  # the budget N
    outcome_budget: dict = field(default_factory=lambda: {"save": 0.6, "click": 0.4})
    surface: str = "home"
    rate: float = 20.0  # requests/s of the paced phases
    paced_requests: int = 200
    inprocess_requests: int = 300
    kv_requests: int = 50
    max_rps_seconds: float = 10.0
    max_rps_clients: int = 4
    bench_users: int = 200  # users with a stored sequence
    seed: int = 0


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_ms, dtype=np.float64)
    if not len(values):
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
    }


def paced(send: Callable[[int], None], rate: float, count: int, workers: int = 8) -> tuple[list[float], int]:
    """Open loop: request i is due at start + i / rate; its latency runs from when it was due to its answer
    (so a slow server cannot hide its queueing). Returns latencies (ms) and the number of errors."""
    latencies, errors = [], [0]
    lock = threading.Lock()
    start = time.perf_counter() + 0.05

    def one(i: int, due: float) -> None:
        try:
            send(i)
        except Exception as error:  # counted, the run goes on
            log.debug("request %d failed: %s", i, error)
            with lock:
                errors[0] += 1
            return
        with lock:
            latencies.append((time.perf_counter() - due) * 1000)

    with ThreadPoolExecutor(workers) as pool:
        for i in range(count):
            due = start + i / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(one, i, due)
    return latencies, errors[0]


def closed_loop(send: Callable[[int], None], clients: int, seconds: float) -> float:
    """Requests/s answered by `clients` back-to-back senders."""
    stop = time.perf_counter() + seconds
    counts = [0] * clients

    def client(n: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            try:
                send(n * 1_000_000 + i)
                counts[n] += 1
            except Exception as error:
                log.debug("request failed: %s", error)
            i += 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return sum(counts) / seconds


# --- set-up ------------------------------------------------------------------------------------------


def build_artifact(config: ServeBenchConfig, out: Path):
    """Train the default model (max_len = history) briefly on a synthetic world with a large catalog."""
    from pinrec.bench.model import multi_token_settings
    from pinrec.featurestore.schema import Vocabulary
    from pinrec.model.artifacts import data_fingerprint, save_artifact
    from pinrec.model.contexts import search_query_items
    from pinrec.model.generate import sample_queries
    from pinrec.model.pretrain import base_config, new_model, prepare, pretrain
    from pinrec.model.sequences import leave_one_out
    from pinrec.model.simulate import SimulationConfig, simulate
    from pinrec.model.train import TrainConfig
    from pinrec.model_commands import outcome_mix

    vocabulary = Vocabulary()
    world = simulate(
        SimulationConfig(users=config.users, items=config.items, days=config.days, seed=config.seed)
    )
    data = prepare(world, vocabulary, item_ids=world.item_ids)  # the whole catalog, engaged or not
    split = leave_one_out(data.histories)
    model_config = base_config(data, max_len=config.history, **multi_token_settings(data))
    model = new_model(model_config, data, seed=config.seed)
    train = TrainConfig(time_budget_s=config.train_minutes * 60, max_epochs=50, seed=config.seed)
    pretrain(model, data, split.train_ends, split.valid.subset(np.arange(min(500, len(split.valid)))), train)
    path = save_artifact(
        out,
        model,
        data.catalog.item_ids,
        vocabulary,
        data_fingerprint(data.log.events),
        popularity=data.catalog.counts,
        query_items=search_query_items(data.log, data.catalog, vocabulary),
        extra={"outcome_mix": outcome_mix(data)},
        index_queries=sample_queries(model, data, steps=config.steps),
    )
    return path, data


def store_histories(config: ServeBenchConfig, item_ids: np.ndarray, data, features) -> list[int]:
    """Sequences of exactly `history` events for bench users: their own positives, the older part filled with
    random catalog items when they have fewer (latency does not depend on which items they are)."""
    from pinrec.featurestore.schema import UserSequence
    from pinrec.featurestore.store import SequenceStore, apply

    rng = np.random.default_rng(config.seed)
    store = SequenceStore(apply(features))
    sequences = []
    now_ms = int(time.time() * 1000)
    count = min(config.bench_users, len(data.histories.user_ids)) if data is not None else config.bench_users
    for row in range(count):
        own, user_id = np.zeros(0, dtype=np.int64), row + 1  # an artifact without its data: filler only
        if data is not None:
            h = data.histories
            own = h.items[h.offsets[row] : h.offsets[row + 1]][-config.history :]
            user_id = int(h.user_ids[row])
        filler = rng.integers(1, len(item_ids) + 1, config.history - len(own))
        items = item_ids[np.concatenate([filler, own]) - 1]
        sequences.append(
            UserSequence(
                user_id=user_id,
                item_ids=tuple(int(i) for i in items),
                actions=tuple(int(a) for a in rng.integers(1, 5, config.history)),
                surfaces=tuple(int(s) for s in rng.integers(0, 3, config.history)),
                event_times_ms=tuple(now_ms - 60_000 * (config.history - i) for i in range(config.history)),
                event_keys=tuple(range(config.history)),
                version_us=1,
            )
        )
    store.write(sequences)
    return [s.user_id for s in sequences]


# --- measurements ------------------------------------------------------------------------------------


def measure_in_process(config: ServeBenchConfig, recommender, users: list[int]) -> tuple[dict, list]:
    from pinrec.serving.request import parse_instance

    stages: dict[str, list[float]] = {}
    for i in range(config.inprocess_requests):
        instance = {"user_id": users[i % len(users)], "k": config.k, "budget": config.outcome_budget}
        instance["steps"] = config.steps
        started = time.perf_counter()
        request = parse_instance(instance, config.surface, recommender.limits(), int(time.time() * 1000))
        history = recommender.read_histories([request])[0]
        features = time.perf_counter() - started
        answer = recommender.recommend(request, config.surface, history)
        timings = {**answer.timings, "features": features, "total": time.perf_counter() - started}
        for stage, seconds in timings.items():
            stages.setdefault(stage, []).append(seconds * 1000)
    return {stage: percentiles(values) for stage, values in stages.items()}, stages["total"]


def measure_kv(config: ServeBenchConfig, recommender, users: list[int]) -> dict:
    from pinrec.model.generate import generate_queries
    from pinrec.serving.engine import _history_batch

    model = recommender.current
    codes = [model.vocabulary.action_code(o) for o in config.outcome_budget]
    surface = model.vocabulary.surface_code(config.surface)
    histories = recommender.read_histories_for(users[: config.kv_requests])
    phases = {(cache, phase): [] for cache in (True, False) for phase in ("prefill", "decode", "total")}
    for history in histories:
        batch = _history_batch(model.indexed(history), model.max_len, int(time.time() * 1000))
        now = batch.times[:, -1] + 1
        for use_cache in (True, False):
            timings: dict[str, float] = {}
            started = time.perf_counter()
            generate_queries(
                model.model,
                batch,
                surface,
                codes,
                config.steps,
                now,
                use_cache=use_cache,
                timings=timings,
                item_table=model.item_vectors,
            )
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
    config: ServeBenchConfig, recommender, users: list[int], samples: int = 500
) -> float:
    """Recall@100 of the served index against exact search, on query vectors the model generated."""
    import faiss

    from pinrec.model.generate import generate_queries
    from pinrec.model.index import recall_at
    from pinrec.serving.engine import _history_batch

    model = recommender.current
    codes = [model.vocabulary.action_code(o) for o in config.outcome_budget]
    surface = model.vocabulary.surface_code(config.surface)
    queries = []
    for history in recommender.read_histories_for(users[:50]):
        batch = _history_batch(model.indexed(history), model.max_len, int(time.time() * 1000))
        now = batch.times[:, -1] + 1
        q = generate_queries(
            model.model, batch, surface, codes, config.steps, now, item_table=model.item_vectors
        )
        queries.append(q.reshape(-1, q.shape[-1]).numpy())
    queries = np.concatenate(queries)
    queries = queries[
        np.random.default_rng(config.seed).choice(len(queries), min(samples, len(queries)), replace=False)
    ]
    exact = faiss.IndexFlatIP(queries.shape[1])
    exact.add(model.item_vectors[1:].numpy())
    _, truth = exact.search(queries, 100)
    return recall_at(model.artifact.index.index, queries, truth)


def _senders(server: ServerProcess, config: ServeBenchConfig, users: list[int]) -> dict[str, Callable]:
    from pinrec.serving.client import grpc_request, grpc_stub, rest_v1, rest_v2

    session = requests.Session()
    stub = grpc_stub(server.grpc)

    def instance(i: int) -> dict:
        return {
            "user_id": users[i % len(users)],
            "k": config.k,
            "budget": config.outcome_budget,
            "steps": config.steps,
        }

    def v1(i: int) -> None:
        rest_v1(server.http, config.surface, [instance(i)], session=session).raise_for_status()

    def v2(i: int) -> None:
        rest_v2(server.http, config.surface, instance(i), session=session).raise_for_status()

    def grpc_v2(i: int) -> None:
        stub.ModelInfer(grpc_request(config.surface, instance(i)), timeout=10)

    return {"rest_v1": v1, "rest": v2, "grpc": grpc_v2}


def measure_server(server: ServerProcess, config: ServeBenchConfig, users: list[int]) -> dict:
    result = {}
    for name, send in _senders(server, config, users).items():
        for i in range(10):  # warm connections and code paths
            send(i)
        latencies, errors = paced(send, config.rate, config.paced_requests)
        stats = percentiles(latencies)
        result[f"{name}_p50_ms"], result[f"{name}_p99_ms"] = stats["p50_ms"], stats["p99_ms"]
        result[f"{name}_errors"] = errors
    result["max_rps"] = round(
        closed_loop(_senders(server, config, users)["rest"], config.max_rps_clients, config.max_rps_seconds),
        1,
    )
    return result


def run_serve_bench(config: ServeBenchConfig, json_path: Path | None) -> dict:
    from pinrec.featurestore.store import FeatureStoreSettings, SequenceStore, open_store
    from pinrec.serving.engine import LoadedModel, Recommender
    from pinrec.serving.server import set_threads
    from pinrec.serving.settings import ServeSettings

    set_threads(1, len(os.sched_getaffinity(0)))  # as the server does
    with tempfile.TemporaryDirectory(prefix="pinrec-bench-serve-") as scratch:
        work = Path(scratch)
        data = None
        if config.artifact is None:
            log.info(
                "training the benchmark artifact (%d items, %.1f min)", config.items, config.train_minutes
            )
            artifact, data = build_artifact(config, work / "artifact")
        else:
            artifact = config.artifact
        set_threads(1, len(os.sched_getaffinity(0)))  # again: training set torch's threads to every CPU
        features = FeatureStoreSettings(repo_dir=work / "repo")
        model = LoadedModel.load(artifact)
        users = store_histories(config, model.artifact.item_ids, data, features)
        settings = ServeSettings(artifact, threads=1)
        recommender = Recommender(settings, model, SequenceStore(open_store(features)))
        stages, totals = measure_in_process(config, recommender, users)
        kv = measure_kv(config, recommender, users)
        recall = measure_index_recall(config, recommender, users)
        arguments = [
            "serve",
            "--artifacts",
            str(artifact),
            "--repo",
            str(features.repo_dir),
            "--online-store",
            "sqlite",
        ]
        server = launch("pinrec.cli", arguments, work / "serve.log")
        try:
            served = measure_server(server, config, users)
        finally:
            server.stop()
        floor_server = launch("pinrec.bench.noop", ["--name", config.surface], work / "noop.log")
        try:
            floor = measure_server(floor_server, config, users)
        finally:
            floor_server.stop()
    inprocess_p99 = stages["total"]["p99_ms"]
    ratios = {
        protocol: served[f"{protocol}_p99_ms"] / (floor[f"{protocol}_p99_ms"] + inprocess_p99)
        for protocol in ("rest", "grpc", "rest_v1")
    }
    result = {
        "inprocess_p50_ms": stages["total"]["p50_ms"],
        "inprocess_p99_ms": inprocess_p99,
        "inprocess_stages": stages,
        "rest_p50_ms": served["rest_p50_ms"],
        "rest_p99_ms": served["rest_p99_ms"],
        "rest_v1_p99_ms": served["rest_v1_p99_ms"],
        "grpc_p50_ms": served["grpc_p50_ms"],
        "grpc_p99_ms": served["grpc_p99_ms"],
        "errors": served["rest_errors"] + served["grpc_errors"] + served["rest_v1_errors"],
        "floor_p99_ms": floor["rest_p99_ms"],
        "floor_grpc_p99_ms": floor["grpc_p99_ms"],
        "floor_max_rps": floor["max_rps"],
        "ratio_vs_floor": round(max(ratios["rest"], ratios["grpc"]), 3),
        "ratio_vs_floor_rest": round(ratios["rest"], 3),
        "ratio_vs_floor_grpc": round(ratios["grpc"], 3),
        **kv,
        "max_rps": served["max_rps"],
        "index_kind": model.artifact.index.kind,
        "index_recall_at_100": round(recall, 4),
        "index_recall_at_100_build": model.artifact.manifest["index"]["recall_at_100"],
        "catalog_items": model.artifact.index.size,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }
    result["config"]["model"] = model.model.config.to_dict() | {
        "parameters": sum(p.numel() for p in model.model.parameters())
    }
    write_json(json_path, result)
    _print(result)
    return result


def _print(r: dict) -> None:
    rows = [
        (
            "catalog / index",
            f"{r['catalog_items']:,} items, {r['index_kind']}, recall@100 {r['index_recall_at_100']:.4f}",
        ),
        ("in-process p50 / p99", f"{r['inprocess_p50_ms']:.2f} / {r['inprocess_p99_ms']:.2f} ms"),
    ]
    for stage, stats in r["inprocess_stages"].items():
        rows.append((f"  stage {stage} p50 / p99", f"{stats['p50_ms']:.2f} / {stats['p99_ms']:.2f} ms"))
    rows += [
        ("REST v2 p50 / p99", f"{r['rest_p50_ms']:.2f} / {r['rest_p99_ms']:.2f} ms"),
        ("REST v1 p99", f"{r['rest_v1_p99_ms']:.2f} ms"),
        ("gRPC p50 / p99", f"{r['grpc_p50_ms']:.2f} / {r['grpc_p99_ms']:.2f} ms"),
        ("no-op floor p99 REST / gRPC", f"{r['floor_p99_ms']:.2f} / {r['floor_grpc_p99_ms']:.2f} ms"),
        ("ratio vs floor (worst)", f"{r['ratio_vs_floor']:.3f}"),
        (
            "decode: KV cache / full recompute",
            f"{r['kv_decode_ms']:.2f} / {r['full_recompute_decode_ms']:.2f} ms ({r['kv_speedup']:.2f}x)",
        ),
        (
            "generation incl. prefill: KV / full",
            f"{r['generation_ms']:.2f} / {r['full_recompute_generation_ms']:.2f} ms "
            f"({r['kv_speedup_with_prefill']:.2f}x)",
        ),
        ("max rps (server / floor)", f"{r['max_rps']:.0f} / {r['floor_max_rps']:.0f}"),
        ("errors", r["errors"]),
    ]
    print_table("Protocol D: serving", rows)
