"""The demo's model: simulate a small world, pretrain on it (a future-window split, so that held-out users
can be scored), finetune one head per surface, save the artifact, and measure recall and diversity against
the retrieval budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pinrec.demo.config import DemoConfig
from pinrec.model.config import DAY_MS

if TYPE_CHECKING:
    from pinrec.model.data.prepare import PreparedData
    from pinrec.model.data.sequences import FutureWindow
    from pinrec.model.data.simulate import World
    from pinrec.model.network import PinRecModel


@dataclass(frozen=True)
class BudgetPoint:
    """Protocol B at one budget N: recall of the held-out users' next 3 days, and diversity."""

    budget: int
    recall: float
    unique_share: float
    coverage: float  # share of the catalog retrieved for anyone


@dataclass
class DemoModel:
    artifact: Path
    data: PreparedData
    world: World  # the simulator's ground truth (item topics)
    curves: dict[str, list[dict]]  # training curves: pretrain and one per surface head
    pretrain_seconds: float
    budget_curve: list[BudgetPoint]  # recall and diversity per budget N


def train_demo_model(config: DemoConfig, work: Path, note: Callable[[str], None]) -> DemoModel:
    from pinrec.featurestore.schema import Vocabulary
    from pinrec.model.artifacts import save_trained
    from pinrec.model.data.prepare import prepare
    from pinrec.model.data.sequences import future_window
    from pinrec.model.data.simulate import SimulationConfig, build_world, simulate
    from pinrec.model.finetune import finetune_surface
    from pinrec.model.pretrain import base_config, new_model, pretrain
    from pinrec.model.train import TrainConfig

    vocabulary = Vocabulary()
    world_config = SimulationConfig(
        users=config.users, items=config.items, days=config.days, seed=config.seed
    )
    log = simulate(world_config, progress=False)
    world = build_world(world_config, vocabulary)
    data = prepare(log, vocabulary, item_ids=log.item_ids)
    note(f"{len(log.events):,} events ({len(data.histories.items):,} engagements) of {config.users:,} users")
    split = future_window(data.histories, 3 * DAY_MS, seed=config.seed)
    model_config = base_config(data, max_len=200)
    model = new_model(model_config, data, seed=config.seed)
    budget = TrainConfig(
        time_budget_s=config.train_minutes * 60, patience=10, seed=config.seed, progress=False
    )  # a small validation set is noisy: more patience
    result = pretrain(model, data, split.train_ends, split.valid, budget, name="pretrain")
    note(
        f"pretrained {result.epochs} epochs in {result.seconds:.0f} s, "
        f"validation NDCG@10 {result.best_metric:.4f}"
    )
    curves = {"pretrain": result.curve}
    train_users = np.flatnonzero(split.train_ends > data.histories.offsets[:-1])
    for surface, name in enumerate(vocabulary.surfaces):
        head = finetune_surface(
            model, data, surface, train_users,
            TrainConfig(max_epochs=config.finetune_epochs, patience=3, seed=config.seed, progress=False),
        )  # fmt: skip
        curves[f"{name} head"] = head.curve
        note(f"{name} head: validation hit@10 {head.best_metric:.4f} (epoch {head.best_epoch})")
    artifact = save_trained(
        work / "artifacts" / "demo-v1", model, data, {"validation_ndcg@10": result.best_metric}
    )
    return DemoModel(artifact, data, world, curves, result.seconds, budget_curve(model, data, split))


def budget_curve(
    model: PinRecModel,
    data: PreparedData,
    split: FutureWindow,
    budgets: tuple[int, ...] = (10, 20, 50, 100, 200),
) -> list[BudgetPoint]:
    """Protocol B on the held-out users at several budgets: recall of their next 3 days, and diversity."""
    from pinrec.model.evaluate import item_index
    from pinrec.model.future_eval import FutureEvalSettings, future_window_metrics

    index = item_index(model)
    outcomes, shares = data.outcome_mix()
    points = []
    for budget in budgets:
        metrics = future_window_metrics(
            model, index, data.histories, split.test, outcomes, shares, data.primary_surface,
            FutureEvalSettings(budget=budget),
        )  # fmt: skip
        points.append(
            BudgetPoint(
                budget,
                recall=metrics[f"recall@{budget}_budgeted"],
                unique_share=metrics["diversity_unique_share"],
                coverage=metrics["catalog_coverage"],
            )
        )
    return points
