"""A small trained artifact with a head per surface, a Feast store holding some users' sequences, and a real
`pinrec serve` process on free ports."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pinrec.featurestore.schema import UserSequence, Vocabulary
from pinrec.featurestore.store import FeatureStoreSettings, SequenceStore, apply
from pinrec.model.artifacts import save_trained
from pinrec.model.data.prepare import PreparedData, prepare
from pinrec.model.data.sequences import leave_one_out
from pinrec.model.data.simulate import SimulationConfig, simulate
from pinrec.model.finetune import finetune_surface
from pinrec.model.pretrain import base_config, new_model, pretrain
from pinrec.model.train import TrainConfig
from pinrec.server_process import ServerProcess, launch


@dataclass
class Served:
    data: PreparedData
    artifacts: Path  # the symlink the server watches
    versions: list[Path]
    features: FeatureStoreSettings
    users: list[int]  # users with a stored sequence
    http: str  # http://127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT
    process: ServerProcess | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_world() -> PreparedData:
    log = simulate(SimulationConfig.small(users=150, items=500, days=7), progress=False)
    return prepare(log, Vocabulary())


def train_artifacts(data: PreparedData, out: Path, versions: int = 2) -> list[Path]:
    """Artifacts v1..vN of one small model with a finetuned head per surface (versions differ by seed)."""
    paths = []
    config = TrainConfig(max_epochs=2, progress=False, threads=1)
    split = leave_one_out(data.histories)
    users = np.arange(len(data.histories.user_ids))
    for version in range(1, versions + 1):
        model_config = base_config(data, dim=32, max_len=30, dropout=0.0)
        model = new_model(model_config, data, seed=version)
        pretrain(model, data, split.train_ends, split.valid, config)
        for surface in range(len(data.vocabulary.surfaces)):
            finetune_surface(
                model, data, surface, users, TrainConfig(max_epochs=1, progress=False, threads=1)
            )
        paths.append(save_trained(out / f"v{version}", model, data))
    return paths


def store_sequences(data: PreparedData, features: FeatureStoreSettings, users: int = 20) -> list[int]:
    """The newest 50 positive actions of the first users, written to the online store."""
    store = SequenceStore(apply(features))
    h = data.histories
    sequences = []
    for row in range(users):
        start, end = max(h.offsets[row], h.offsets[row + 1] - 50), h.offsets[row + 1]
        sequences.append(
            UserSequence(
                user_id=int(h.user_ids[row]),
                item_ids=tuple(int(i) for i in data.catalog.item_ids[h.items[start:end] - 1]),
                actions=tuple(int(a) for a in h.actions[start:end]),
                surfaces=tuple(int(s) for s in h.surfaces[start:end]),
                event_times_ms=tuple(int(t) for t in h.times[start:end]),
                event_keys=tuple(range(end - start)),
                version_us=1,
            )
        )
    store.write(sequences)
    return [s.user_id for s in sequences]


def start_server(served: Served, env: dict[str, str], log_path: Path, extra: tuple[str, ...] = ()) -> None:
    arguments = ["serve", "--artifacts", str(served.artifacts), "--repo", str(served.features.repo_dir)]
    arguments += ["--online-store", "sqlite", "--watch-interval", "0.5", *extra]
    server = launch("pinrec.cli", arguments, log_path, env=env)
    served.process, served.http, served.grpc = server, server.http, server.grpc


def stop_server(served: Served) -> None:
    if served.process is not None:
        served.process.stop()
