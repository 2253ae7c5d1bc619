"""Pretraining: the backbone and the shared head learn from positive actions of every surface, each position
predicting the next action and (multi-token) actions within future windows, conditioned on the target's
outcome and surface. The SASRec baseline runs through the same function with PinRec's parts switched off."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pinrec.model.artifacts import data_fingerprint
from pinrec.model.config import DAY_MS, HOUR_MS, ModelConfig
from pinrec.model.data.prepare import PreparedData
from pinrec.model.data.sequences import Examples, Histories, ShardedEpoch, TrainingBatch, training_batches
from pinrec.model.distributed import current, on_training_device, user_shards
from pinrec.model.evaluate import exact_metrics, next_queries
from pinrec.model.loss import full_softmax_loss, item_log_frequency, sampled_softmax_loss
from pinrec.model.network import PinRecModel
from pinrec.model.train import TrainConfig, TrainResult, fit, run_key

BATCH_TOKENS = 6_400  # tokens per training batch: long histories get fewer users per batch (ours)
MAX_BATCH_USERS = 128


def users_per_batch(histories: Histories, train_ends: np.ndarray, max_len: int) -> int:
    lengths = np.minimum(train_ends - histories.offsets[:-1], max_len + 1)
    typical = float(lengths[lengths >= 2].mean()) if (lengths >= 2).any() else 1.0
    return int(np.clip(BATCH_TOKENS // typical, 16, MAX_BATCH_USERS))


def training_counts(histories: Histories, train_ends: np.ndarray, num_items: int) -> np.ndarray:
    """Positive actions per item index 0..V within the training ranges only: validation and test targets
    must not leak their popularity into training (the logQ correction)."""
    starts = histories.offsets[:-1]
    user = np.repeat(np.arange(len(starts)), histories.lengths)
    inside = np.arange(len(histories.items)) < train_ends[user]
    return np.bincount(histories.items[inside], minlength=num_items + 1).astype(np.int64)


def new_model(config: ModelConfig, data: PreparedData, seed: int = 0) -> PinRecModel:
    torch.manual_seed(seed)
    content = torch.from_numpy(data.catalog.content) if data.catalog.content is not None else None
    return PinRecModel(config, content)


def data_settings(data: PreparedData) -> dict:
    """Offsets and input features that fit the data (ours). S3-Rec files carry one synthetic day per action
    and are judged on the next item only: their windows are the next 3 and the next 10 actions, trained at a
    quarter of the positions (a window target at every position costs a third more time per epoch and
    lowered next-item HR@10), without time features (their timestamps carry no information). Real
    timestamps get windows of an hour, a day and a week at every position. One window target is drawn per
    position and epoch and weighs half a next-item target."""
    if data.log.info.get("source") == "s3rec":
        return {
            "offsets_ms": (0, 3 * DAY_MS, 10 * DAY_MS),
            "sampled_windows": 1,
            "window_share": 0.25,
            "time_features": False,
        }
    return {"offsets_ms": (0, HOUR_MS, DAY_MS, 7 * DAY_MS), "sampled_windows": 1}


def base_config(data: PreparedData, **overrides) -> ModelConfig:
    """The model configuration for a dataset: vocabulary and catalog sizes filled in, offsets and inputs
    that fit its timestamps (data_settings), then the overrides."""
    content_dim = data.catalog.content.shape[1] if data.catalog.content is not None else 0
    return ModelConfig(
        num_items=data.catalog.size,
        num_actions=len(data.vocabulary.actions),
        num_surfaces=len(data.vocabulary.surfaces),
        content_dim=content_dim,
        **(data_settings(data) | overrides),
    )


@on_training_device
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
    counts = training_counts(data.histories, train_ends, data.catalog.size)
    group = current()
    device = group.device  # where the model is (on_training_device)
    model.items.set_evidence(counts)
    log_frequency = item_log_frequency(torch.from_numpy(counts)).to(device)
    # Random draws come from the CPU whatever the device, so a GPU run draws what the CPU run draws.
    generator = torch.Generator().manual_seed(train_config.seed)
    batch_users = batch_users or users_per_batch(data.histories, train_ends, config.max_len)
    trained_users = int((train_ends - data.histories.offsets[:-1] >= 2).sum())
    steps_per_epoch = max(1, -(-trained_users // batch_users))
    # Warm up for at most one epoch (a fixed step count is many epochs on a small dataset).
    train_config = replace(train_config, warmup_steps=min(train_config.warmup_steps, steps_per_epoch))

    shards = train_config.data_shards or group.world_size
    shard_of = user_shards(data.histories.user_ids, shards)

    def batches(epoch: int):
        def epoch_of(users: np.ndarray | None, rng: np.random.Generator, users_per_batch: int):
            return training_batches(
                data.histories,
                train_ends,
                config.offsets,
                config.max_len,
                users_per_batch,
                rng,
                config.sampled_windows,
                config.window_share,
                users,
            )

        if shards == 1:
            return epoch_of(None, np.random.default_rng([train_config.seed, epoch]), batch_users)
        # A global batch: a micro-batch from every shard (model.distributed), this process's shards here.
        micro = max(1, batch_users // shards)
        parts, steps = group.sharded_parts(
            shards, train_config.seed, epoch, lambda s, rng: epoch_of(shard_of == s, rng, micro)
        )
        return ShardedEpoch(parts, steps)

    def step_loss(batch: TrainingBatch) -> torch.Tensor:
        batch = batch.to(device)
        hidden, _ = model.encode(**batch.inputs.to_dict())  # (B, T, C)
        b, t, k = (batch.targets > 0).nonzero(as_tuple=True)  # one prediction per (row, position, offset)
        outcomes = batch.target_actions[b, t, k]
        # Drawn for the global batch, this process's slice taken: the same draws however it is split.
        start, total = group.local_slice(len(outcomes))
        draws = torch.rand(total, generator=generator)[start : start + len(outcomes)].to(device)
        hidden_outcome = draws < config.any_outcome_share
        outcomes = torch.where(hidden_outcome, config.any_outcome, outcomes)
        queries = model.query(hidden[b, t], outcomes, batch.target_surfaces[b, t, k], k)
        targets = batch.targets[b, t, k]
        weights = torch.where(k == 0, 1.0, config.window_weight)
        if config.loss == "full":
            return full_softmax_loss(queries, targets, model.items.all_items(), config.temperature, weights)
        return sampled_softmax_loss(
            queries,
            targets,
            model.items,
            log_frequency,
            config.random_negatives,
            config.temperature,
            generator,
            weights=weights,
        )

    def validate() -> float:
        queries = next_queries(model, data.histories, valid, config.any_outcome, data.primary_surface)
        return exact_metrics(queries, model.items.all_items(), data.histories, valid)["ndcg@10"]

    key = (  # what a checkpoint must match to be resumed (hashing the events is skipped without one)
        run_key(
            name,
            data_fingerprint(data.log.events),
            config.to_dict(),
            train_config.seed,
            train_config.learning_rate,
            shards,
            batch_users,
        )
        if checkpoint is not None
        else ""
    )
    return fit(
        model,
        model.parameters(),
        batches,
        step_loss,
        validate,
        train_config,
        checkpoint,
        name,
        key,
        generator,
    )
