"""`pinrec bench model`: PinRec against the SASRec baseline, trained in the same run on the same split
with the same time budget, evaluated through the faiss retrieval path.

Protocol A (leave-one-out, full ranking) on public sequence files; protocol B (future windows on held-out
users: variants, pretrain-only vs finetuned heads) and protocol C (outcome control) on event logs with
several outcomes or surfaces (the synthetic world, MovieLens).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pinrec.bench.report import print_table, write_json
from pinrec.featurestore.schema import Vocabulary
from pinrec.model.config import DAY_MS, ModelConfig
from pinrec.model.data.contexts import carries_contexts
from pinrec.model.data.loaders import dataset_name, load_dataset
from pinrec.model.data.prepare import PreparedData, prepare
from pinrec.model.data.sequences import future_window, leave_one_out
from pinrec.model.distributed import process_group
from pinrec.model.evaluate import item_index, leave_one_out_metrics, next_queries
from pinrec.model.finetune import finetune_surface
from pinrec.model.future_eval import (
    FutureEvalSettings,
    future_window_metrics,
    outcome_control_metrics,
    surface_session_metrics,
)
from pinrec.model.pretrain import base_config, new_model, pretrain
from pinrec.model.train import TrainConfig, plot_curves

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelBenchConfig:
    dataset: Path
    protocol: str = "auto"  # loo | future | auto (future when the log has several outcomes or surfaces)
    time_budget_min: float = 20.0  # training time per model and seed
    out_dir: Path = Path("bench-model")  # training curves and per-run details
    seed: int = 0  # the first seed; run i trains with seed + i
    seeds: int = 3  # runs per model: the report gives their mean and standard deviation
    max_epochs: int = 200
    threads: int = 0  # torch threads per process (0: every available CPU)
    dim: int = 64  # model width (the GPU check trains wider: 128-256)
    device: str = "cpu"  # where the models train: cpu | cuda | auto (model.distributed.training_device)
    window_ms: int = 7 * DAY_MS  # protocol B target window
    budget: int = 100  # protocol B budgeted recall N


def history_cap(name: str) -> int:
    """Protocol A: 200 for MovieLens, 50 for the Amazon/Yelp-style files."""
    return 200 if name.startswith("ml-") else 50


def model_config(data: PreparedData, variant: str, max_len: int, dim: int = 64) -> ModelConfig:
    """A variant's configuration for this dataset; the variant switches parts off, never on."""
    return base_config(data, max_len=max_len, dim=dim).with_variant(variant)


def run_model_bench(config: ModelBenchConfig, json_path: Path | None) -> dict:
    with process_group(config.device):  # the models train on config.device
        return _run_model_bench(config, json_path)


def _run_model_bench(config: ModelBenchConfig, json_path: Path | None) -> dict:
    if config.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    vocabulary = Vocabulary()
    event_log = load_dataset(config.dataset, vocabulary)
    name = dataset_name(config.dataset)
    data = prepare(event_log, vocabulary)
    protocol = config.protocol
    if protocol == "auto":
        several = len(np.unique(data.histories.actions)) > 1 or len(np.unique(data.histories.surfaces)) > 1
        protocol = "future" if several else "loo"
    if protocol not in ("loo", "future"):
        raise ValueError(f"unknown protocol {protocol!r}; use loo, future or auto")
    run = _leave_one_out if protocol == "loo" else _future
    runs, curves = [], {}
    for seed in range(config.seed, config.seed + config.seeds):
        train_config = TrainConfig(
            time_budget_s=config.time_budget_min * 60,
            seed=seed,
            max_epochs=config.max_epochs,
            threads=config.threads,
        )
        outcome = run(config, data, train_config)
        runs.append(outcome)
        curves |= {f"{model} seed {seed}": curve for model, curve in outcome.pop("curves").items()}
    result = {"dataset": name, "protocol": protocol, **runs[0]["facts"]}
    result["seeds"] = config.seeds
    result["results"] = mean_over_seeds([r["results"] for r in runs], "model")
    if protocol == "future":
        result["surfaces"] = mean_over_seeds([r["surfaces"] for r in runs], "surface")
    metric = "NDCG@10" if protocol == "loo" else "NDCG@10 (next item)"
    result["curves_png"] = str(plot_curves(curves, config.out_dir / f"{name}-{protocol}-curves.png", metric))
    result["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    (_print_loo if protocol == "loo" else _print_future)(result, config)
    write_json(json_path, result)
    return result


def mean_over_seeds(runs: list[list[dict]], key: str) -> list[dict]:
    """One row per model (or surface): the mean of every number over the seeds, `<name>_std` beside each
    metric (population standard deviation), and the per-seed rows under "runs"."""
    out = []
    for rows in zip(*runs, strict=True):
        merged = {key: rows[0][key], "seeds": len(rows)}
        for name, value in rows[0].items():
            if name == key or not isinstance(value, int | float):
                continue
            values = np.array([row[name] for row in rows], dtype=np.float64)
            merged[name] = round(float(values.mean()), 4)
            if isinstance(value, float):
                merged[f"{name}_std"] = round(float(values.std()), 4)
        merged["runs"] = list(rows)
        out.append(merged)
    return out


def _leave_one_out(config: ModelBenchConfig, data: PreparedData, train_config: TrainConfig) -> dict:
    name = dataset_name(config.dataset)
    split = leave_one_out(data.histories)
    results, curves = [], {}
    for variant in ("sasrec", "pinrec"):
        model = new_model(
            model_config(data, variant, history_cap(name), config.dim), data, seed=train_config.seed
        )
        trained = pretrain(model, data, split.train_ends, split.valid, train_config, name=variant)
        index = item_index(model)
        queries = next_queries(
            model, data.histories, split.test, model.config.any_outcome, data.primary_surface
        )
        metrics = leave_one_out_metrics(index, queries, data.histories, split.test)
        curves[variant] = trained.curve
        results.append(
            {
                "model": variant,
                **{key: round(value, 4) for key, value in metrics.items()},
                "train_seconds": round(trained.seconds, 1),
                "epochs": trained.epochs,
                "best_epoch": trained.best_epoch,
                "stopped_by": trained.stopped_by,
                "seed": train_config.seed,
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
    facts = {"index": "faiss IndexFlatIP (exact)", "test_users": len(split.test)}
    return {"facts": facts, "results": results, "curves": curves}


def _print_loo(report: dict, config: ModelBenchConfig) -> None:
    results = report["results"]
    print_table(
        f"Protocol A (leave-one-out, full ranking) on {report['dataset']}, {report['test_users']:,} users, "
        f"mean ± std over {report['seeds']} seeds; d={config.dim} on {config.device}",
        [
            (
                f"{r['model']} HR@10 / NDCG@10 / HR@50",
                f"{_pm(r, 'hr@10')} / {_pm(r, 'ndcg@10')} / {_pm(r, 'hr@50')}",
            )
            for r in results
        ]
        + [
            (
                f"{r['model']} training per seed",
                f"{r['train_seconds']:.0f} s, stopped by "
                + ", ".join(sorted({run["stopped_by"] for run in r["runs"]})),
            )
            for r in results
        ],
    )


def _pm(row: dict, name: str) -> str:
    return f"{row[name]:.4f} ± {row[name + '_std']:.4f}"


def _future(config: ModelBenchConfig, data: PreparedData, train_config: TrainConfig) -> dict:
    split = future_window(data.histories, config.window_ms, seed=train_config.seed)
    outcomes, shares = data.outcome_mix()
    surface = data.primary_surface
    settings = FutureEvalSettings(budget=config.budget)
    train_users = np.flatnonzero(split.train_ends > data.histories.offsets[:-1])
    results, curves, models = [], {}, {}
    for variant in ("sasrec", "pinrec-unconditioned", "pinrec-oc", "pinrec"):
        model = new_model(model_config(data, variant, 200, config.dim), data, seed=train_config.seed)
        trained = pretrain(model, data, split.train_ends, split.valid, train_config, name=variant)
        index = item_index(model)
        metrics = future_window_metrics(
            model, index, data.histories, split.test, outcomes, shares, surface, settings
        )
        control = outcome_control_metrics(
            model, index, data.histories, split.test, outcomes, surface, settings
        )
        curves[variant] = trained.curve
        models[variant] = (model, index)
        results.append(
            {
                "model": variant,
                **_rounded(metrics),
                **_rounded(control),
                "train_seconds": round(trained.seconds, 1),
                "seed": train_config.seed,
            }
        )
    surfaces = _finetuned_heads(
        models["pinrec"], data, split, train_users, outcomes, shares, settings, train_config
    )
    facts = {
        "window_ms": config.window_ms,
        "budget": config.budget,
        "outcome_budget": {
            data.vocabulary.actions[o]: round(s, 3) for o, s in zip(outcomes, shares, strict=True)
        },
    }
    return {"facts": facts, "results": results, "surfaces": surfaces, "curves": curves}


def _print_future(report: dict, config: ModelBenchConfig) -> None:
    rows = []
    budgeted = f"recall@{config.budget}_budgeted"
    for r in report["results"]:
        rows.append(
            (
                f"{r['model']} R@10 unordered / R@{config.budget} budgeted / unique share",
                f"{_pm(r, 'recall@10_unordered')} / {_pm(r, budgeted)} / {_pm(r, 'diversity_unique_share')}",
            )
        )
        rows.append(
            (
                f"{r['model']} outcome control matched / mismatched",
                f"{_pm(r, 'recall_matched')} / {_pm(r, 'recall_mismatched')}",
            )
        )
    for s in report["surfaces"]:
        rows.append(
            (
                f"{s['surface']} head R@{config.budget}: pretrain-only / finetuned",
                f"{_pm(s, 'pretrain_only')} / {_pm(s, 'finetuned')}",
            )
        )
    print_table(f"Protocols B and C on {report['dataset']}, mean ± std over {report['seeds']} seeds", rows)


def _finetuned_heads(
    trained, data, split, train_users, outcomes, shares, settings, train_config
) -> list[dict]:
    """Pretrain-only head against a finetuned head on each surface with sessions (budgeted recall). A surface
    whose requests carry a context (search, related) is judged per held-out session with its context token,
    as the server answers it; the others (home) on the held-out users' targets on that surface."""
    model, index = trained
    key = f"recall@{settings.budget}_budgeted"
    out = []
    if data.log.events["session_id"].isna().all():
        return out
    for surface, name in enumerate(data.vocabulary.surfaces):
        if not (data.histories.surfaces == surface).any():
            continue
        finetune_surface(
            model,
            data,
            surface,
            train_users,
            replace(train_config, time_budget_s=None, max_epochs=30, patience=3),
        )
        before, after = (
            _surface_recall(model, index, data, split, surface, head, outcomes, shares, settings)
            for head in ("shared", name)
        )
        out.append(
            {
                "surface": name,
                "pretrain_only": round(before[key], 4),
                "finetuned": round(after[key], 4),
                "cases": after["cases"],
            }
        )
    return out


def _surface_recall(model, index, data, split, surface, head, outcomes, shares, settings) -> dict:
    """A head's budgeted recall on one surface: per held-out session with its context token where the
    surface's requests carry one (search, related), else on the held-out users' targets on the surface."""
    if carries_contexts(data.log.events, data.vocabulary.surfaces[surface]):
        return surface_session_metrics(
            model, index, data, split.test, split.window_ms, surface, outcomes, shares, settings, head
        )
    return future_window_metrics(
        model,
        index,
        data.histories,
        split.test,
        outcomes,
        shares,
        surface,
        settings,
        head,
        target_surface=surface,
    )


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
