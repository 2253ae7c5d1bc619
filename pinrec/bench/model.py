"""`pinrec bench model`: PinRec against the SASRec baseline, trained in the same run on the same split
with the same time budget, evaluated through the faiss retrieval path.

Protocol A (leave-one-out, full ranking) on public sequence files; protocol B (future windows on held-out
users: variants, pretrain-only vs finetuned heads) and protocol C (outcome control) on event logs with
several outcomes or surfaces (the synthetic world, MovieLens).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pinrec.bench.report import print_table, write_json
from pinrec.featurestore.schema import Vocabulary
from pinrec.model.config import DAY_MS, HOUR_MS
from pinrec.model.data.loaders import dataset_name, load_dataset
from pinrec.model.data.prepare import PreparedData, prepare
from pinrec.model.data.sequences import future_window, leave_one_out
from pinrec.model.evaluate import item_index, leave_one_out_metrics, next_queries
from pinrec.model.finetune import finetune_surface
from pinrec.model.future_eval import FutureEvalSettings, future_window_metrics, outcome_control_metrics
from pinrec.model.pretrain import base_config, new_model, pretrain
from pinrec.model.train import TrainConfig, plot_curves

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelBenchConfig:
    dataset: Path
    protocol: str = "auto"  # loo | future | auto (future when the log has several outcomes or surfaces)
    time_budget_min: float = 20.0  # training time per model
    out_dir: Path = Path("bench-model")  # training curves and per-run details
    seed: int = 0
    max_epochs: int = 200
    window_ms: int = 7 * DAY_MS  # protocol B target window
    budget: int = 100  # protocol B budgeted recall N


def history_cap(name: str) -> int:
    """Protocol A: 200 for MovieLens, 50 for the Amazon/Yelp-style files."""
    return 200 if name.startswith("ml-") else 50


def multi_token_settings(data: PreparedData) -> dict:
    """Offsets that fit the data (ours): S3-Rec files carry one synthetic day per action, so windows of 3
    and 10 actions, every window trained at every position; real timestamps get an hour, a day and a week,
    one window drawn per position (three would triple the loss's cost)."""
    if data.log.info.get("source") == "s3rec":
        return {"offsets_ms": (0, 3 * DAY_MS, 10 * DAY_MS), "sampled_windows": 0}
    return {"offsets_ms": (0, HOUR_MS, DAY_MS, 7 * DAY_MS), "sampled_windows": 1}


def run_model_bench(config: ModelBenchConfig, json_path: Path | None) -> dict:
    vocabulary = Vocabulary()
    event_log = load_dataset(config.dataset, vocabulary)
    name = dataset_name(config.dataset)
    data = prepare(event_log, vocabulary)
    protocol = config.protocol
    if protocol == "auto":
        several = len(np.unique(data.histories.actions)) > 1 or len(np.unique(data.histories.surfaces)) > 1
        protocol = "future" if several else "loo"
    train_config = TrainConfig(
        time_budget_s=config.time_budget_min * 60, seed=config.seed, max_epochs=config.max_epochs
    )
    if protocol == "loo":
        result = _leave_one_out(config, data, name, train_config)
    elif protocol == "future":
        result = _future(config, data, name, train_config)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; use loo, future or auto")
    result["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    write_json(json_path, result)
    return result


def _leave_one_out(
    config: ModelBenchConfig, data: PreparedData, name: str, train_config: TrainConfig
) -> dict:
    split = leave_one_out(data.histories)
    results, curves = [], {}
    for variant in ("sasrec", "pinrec"):
        model_config = base_config(data, max_len=history_cap(name), **multi_token_settings(data))
        model_config = model_config.with_variant(variant)
        model = new_model(model_config, data, seed=config.seed)
        trained = pretrain(model, data, split.train_ends, split.valid, train_config, name=variant)
        index = item_index(model)
        queries = next_queries(model, data.histories, split.test, data.primary_outcome, data.primary_surface)
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
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
    curve_png = plot_curves(curves, config.out_dir / f"{name}-loo-curves.png", "NDCG@10")
    report = {
        "dataset": name,
        "protocol": "loo",
        "index": "faiss IndexFlatIP (exact)",
        "test_users": len(split.test),
        "results": results,
        "curves_png": str(curve_png),
    }
    print_table(
        f"Protocol A (leave-one-out, full ranking) on {name}, {len(split.test):,} users",
        [
            (
                f"{r['model']} HR@10 / NDCG@10 / HR@50",
                f"{r['hr@10']:.4f} / {r['ndcg@10']:.4f} / {r['hr@50']:.4f}",
            )
            for r in results
        ]
        + [
            (
                f"{r['model']} training",
                f"{r['train_seconds']:.0f} s, {r['epochs']} epochs ({r['stopped_by']})",
            )
            for r in results
        ],
    )
    return report


def _future(config: ModelBenchConfig, data: PreparedData, name: str, train_config: TrainConfig) -> dict:
    split = future_window(data.histories, config.window_ms, seed=config.seed)
    outcomes, shares = data.outcome_mix()
    surface = data.primary_surface
    settings = FutureEvalSettings(budget=config.budget)
    train_users = np.flatnonzero(split.train_ends > data.histories.offsets[:-1])
    results, curves, models = [], {}, {}
    for variant in ("sasrec", "pinrec-unconditioned", "pinrec-oc", "pinrec"):
        model_config = base_config(data, max_len=200, **multi_token_settings(data)).with_variant(variant)
        model = new_model(model_config, data, seed=config.seed)
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
            }
        )
    surfaces = _finetuned_heads(
        models["pinrec"], data, split, train_users, outcomes, shares, settings, train_config
    )
    curve_png = plot_curves(curves, config.out_dir / f"{name}-future-curves.png", "NDCG@10 (next item)")
    report = {
        "dataset": name,
        "protocol": "future",
        "window_ms": config.window_ms,
        "budget": config.budget,
        "outcome_budget": {
            data.vocabulary.actions[o]: round(s, 3) for o, s in zip(outcomes, shares, strict=True)
        },
        "results": results,
        "surfaces": surfaces,
        "curves_png": str(curve_png),
    }
    rows = []
    for r in results:
        rows.append(
            (
                f"{r['model']} R@10 unordered / R@{config.budget} budgeted / unique share",
                f"{r['recall@10_unordered']:.4f} / {r[f'recall@{config.budget}_budgeted']:.4f} / "
                f"{r['diversity_unique_share']:.3f}",
            )
        )
        rows.append(
            (
                f"{r['model']} outcome control matched / mismatched",
                f"{r['recall_matched']:.4f} / {r['recall_mismatched']:.4f}",
            )
        )
    for s in surfaces:
        rows.append(
            (
                f"{s['surface']} head R@{config.budget}: pretrain-only / finetuned",
                f"{s['pretrain_only']:.4f} / {s['finetuned']:.4f}",
            )
        )
    print_table(f"Protocols B and C on {name}", rows)
    return report


def _finetuned_heads(
    trained, data, split, train_users, outcomes, shares, settings, train_config
) -> list[dict]:
    """Pretrain-only head against a finetuned head on each surface with sessions (budgeted recall on the
    held-out users' targets on that surface)."""
    model, index = trained
    key = f"recall@{settings.budget}_budgeted"
    out = []
    if data.log.events["session_id"].isna().all():
        return out
    for surface, name in enumerate(data.vocabulary.surfaces):
        if not (data.histories.surfaces == surface).any():
            continue
        finetune_surface(
            model, data, surface, train_users, TrainConfig(seed=train_config.seed, max_epochs=30, patience=3)
        )
        common = dict(target_surface=surface)
        before = future_window_metrics(
            model, index, data.histories, split.test, outcomes, shares, surface, settings, "shared", **common
        )
        after = future_window_metrics(
            model, index, data.histories, split.test, outcomes, shares, surface, settings, name, **common
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


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
