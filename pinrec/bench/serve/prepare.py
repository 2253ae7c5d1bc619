"""What the serving benchmark serves: the artifact (trained here on a synthetic world with a large catalog
unless one is given) and a stored history of full length for each benchmark user."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pinrec.bench.serve.config import ServeBenchConfig

if TYPE_CHECKING:
    from pinrec.featurestore.store import FeatureStoreSettings
    from pinrec.model.data.prepare import PreparedData


def build_artifact(config: ServeBenchConfig, out: Path) -> tuple[Path, PreparedData]:
    """Train the default model (max_len = history) briefly on a synthetic world with a large catalog."""
    from pinrec.featurestore.schema import Vocabulary
    from pinrec.model.artifacts import save_trained
    from pinrec.model.data.prepare import prepare
    from pinrec.model.data.sequences import leave_one_out
    from pinrec.model.data.simulate import SimulationConfig, simulate
    from pinrec.model.pretrain import base_config, new_model, pretrain
    from pinrec.model.train import TrainConfig

    vocabulary = Vocabulary()
    world = simulate(
        SimulationConfig(users=config.users, items=config.items, days=config.days, seed=config.seed)
    )
    data = prepare(world, vocabulary, item_ids=world.item_ids)  # the whole catalog, engaged or not
    split = leave_one_out(data.histories)
    model_config = base_config(data, max_len=config.history)
    model = new_model(model_config, data, seed=config.seed)
    train = TrainConfig(time_budget_s=config.train_minutes * 60, max_epochs=50, seed=config.seed)
    pretrain(model, data, split.train_ends, split.valid.subset(np.arange(min(500, len(split.valid)))), train)
    return save_trained(out, model, data, decode_steps=config.steps), data


def store_histories(
    config: ServeBenchConfig,
    item_ids: np.ndarray,
    data: PreparedData | None,
    features: FeatureStoreSettings,
) -> list[int]:
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
