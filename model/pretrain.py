"""Pretraining: the backbone and the shared head learn from positive actions of every surface, each position
predicting the next action and (multi-token) actions within future windows, conditioned on the target's
outcome and surface. The SASRec baseline runs through the same function with PinRec's parts switched off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pinrec.model.config import ModelConfig
from pinrec.model.data.prepare import PreparedData
from pinrec.model.data.sequences import Examples, Histories, TrainingBatch, training_batches
from pinrec.model.evaluate import item_index, leave_one_out_metrics, next_queries
from pinrec.model.loss import item_log_frequency, sampled_softmax_loss
from pinrec.model.network import PinRecModel
from pinrec.model.train import TrainConfig, TrainResult, fit

VALIDATION_CASES = 8_000
BATCH_TOKENS = 4_096  # tokens per training batch: long histories get fewer users per batch (ours)


def users_per_batch(histories: Histories, train_ends: np.ndarray, max_len: int) -> int:
    lengths = np.minimum(train_ends - histories.offsets[:-1], max_len + 1)
    typical = float(lengths[lengths >= 2].mean()) if (lengths >= 2).any() else 1.0
    return int(np.clip(BATCH_TOKENS // typical, 16, 256))


def new_model(config: ModelConfig, data: PreparedData, seed: int = 0) -> PinRecModel:
    torch.manual_seed(seed)
    content = torch.from_numpy(data.catalog.content) if data.catalog.content is not None else None
    return PinRecModel(config, content)


def base_config(data: PreparedData, **overrides) -> ModelConfig:
    """The model configuration for a dataset: vocabulary and catalog sizes filled in."""
    content_dim = data.catalog.content.shape[1] if data.catalog.content is not None else 0
    return ModelConfig(
        num_items=data.catalog.size,
        num_actions=len(data.vocabulary.actions),
        num_surfaces=len(data.vocabulary.surfaces),
        content_dim=content_dim,
        **overrides,
    )


def pretrain(
    model: PinRecModel,
    data: PreparedData,
    train_ends: np.ndarray,
    valid: Examples,
    train_config: TrainConfig,
    batch_users: int | None = None,
    checkpoint: Path | None = None,
    name: str = "pretrain",
) -> TrainResult:
    config = model.config
    valid = valid.first_targets()  # early stopping watches the next item, whatever the protocol
    if len(valid) > VALIDATION_CASES:  # enough for early stopping, a few seconds per epoch
        valid = valid.subset(
            np.sort(
                np.random.default_rng(train_config.seed).choice(len(valid), VALIDATION_CASES, replace=False)
            )
        )
    log_frequency = item_log_frequency(torch.from_numpy(data.catalog.counts))
    generator = torch.Generator().manual_seed(train_config.seed)
    batch_users = batch_users or users_per_batch(data.histories, train_ends, config.max_len)

    def batches(epoch: int):
        rng = np.random.default_rng([train_config.seed, epoch])
        return training_batches(
            data.histories,
            train_ends,
            config.offsets,
            config.max_len,
            batch_users,
            rng,
            config.sampled_windows,
        )

    def step_loss(batch: TrainingBatch) -> torch.Tensor:
        hidden, _ = model.encode(**batch.inputs.to_dict())  # (B, T, C)
        b, t, k = (batch.targets > 0).nonzero(as_tuple=True)  # one prediction per (row, position, offset)
        queries = model.query(hidden[b, t], batch.target_actions[b, t, k], batch.target_surfaces[b, t, k], k)
        return sampled_softmax_loss(
            queries,
            batch.targets[b, t, k],
            model.items,
            log_frequency,
            config.random_negatives,
            config.temperature,
            generator,
        )

    def validate() -> float:
        index = item_index(model)
        queries = next_queries(model, data.histories, valid, data.primary_outcome, data.primary_surface)
        return leave_one_out_metrics(index, queries, data.histories, valid)["ndcg@10"]

    return fit(model, model.parameters(), batches, step_loss, validate, train_config, checkpoint, name)
