"""`pinrec bench train`: pretraining throughput of one process against N data-parallel processes (torchrun,
gloo on the CPU), measured in the same run on the same data and global batches: history tokens per
second of the training steps (validation excluded), seconds per epoch, the ratio, and how far apart the two
loss curves are (they should agree to float precision: `--data-shards N` in both runs, dropout off)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pinrec.bench.report import print_table, write_json


@dataclass(frozen=True)
class TrainingBenchConfig:
    data: Path | None = None  # an event log; default: a simulated world of `users` users
    users: int = 4000
    processes: int = 2
    epochs: int = 3
    dim: int = 64
    out_dir: Path = Path("bench-training")


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _world(config: TrainingBenchConfig) -> Path:
    if config.data is not None:
        return config.data
    world = config.out_dir / f"world-{config.users}"
    if not (world / "events.parquet").exists():
        command = [_bin("pinrec"), "simulate", "--small", "--users", str(config.users), "--out", str(world)]
        subprocess.run(command, check=True)
    return world


def _train(config: TrainingBenchConfig, data: Path, processes: int) -> dict:
    """One pretraining run with this many processes; its measured throughput."""
    out = config.out_dir / f"artifact-{processes}"
    shutil.rmtree(out, ignore_errors=True)
    out.with_name(f"{out.name}.checkpoint.pt").unlink(missing_ok=True)  # torchrun's default: start afresh
    command = [_bin("pinrec"), "train", "--data", str(data), "--out", str(out), "--seed", "0"]
    command += ["--max-epochs", str(config.epochs), "--dim", str(config.dim), "--dropout", "0"]
    command += ["--data-shards", str(config.processes)]  # the same global batches in both runs
    if processes > 1:
        command = [_bin("torchrun"), "--standalone", f"--nproc-per-node={processes}", "--no-python", *command]
    started = time.monotonic()
    subprocess.run(command, check=True)
    wall = time.monotonic() - started
    training = json.loads((out / "manifest.json").read_text())["metrics"]["training"]
    curve = training["curve"]
    tokens = sum(epoch["tokens"] for epoch in curve)
    step_seconds = sum(epoch["train_seconds"] for epoch in curve)
    return {
        "processes": processes,
        "backend": training.get("backend", "single"),
        "tokens": tokens,
        "train_seconds": round(step_seconds, 2),
        "tokens_per_s": round(tokens / step_seconds, 1),
        "epoch_s": round(step_seconds / len(curve), 2),
        "wall_s": round(wall, 1),
        "step_losses": [loss for epoch in curve for loss in epoch["step_losses"]],
        "validation_ndcg@10": training["best_metric"],
    }


def run_training_bench(config: TrainingBenchConfig, json_path: Path | None) -> dict:
    config.out_dir.mkdir(parents=True, exist_ok=True)
    data = _world(config)
    one, many = (_train(config, data, processes) for processes in (1, config.processes))
    losses_one, losses_many = np.asarray(one.pop("step_losses")), np.asarray(many.pop("step_losses"))
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "one_process": one,
        "processes": many,
        "speedup": round(many["tokens_per_s"] / one["tokens_per_s"], 3),
        "steps": len(losses_one),
        "max_step_loss_difference": float(np.abs(losses_one - losses_many).max()),
    }
    rows = [
        ("steps (same global batches in both runs)", result["steps"]),
        ("1 process: tokens/s", one["tokens_per_s"]),
        ("1 process: s per epoch (steps only)", one["epoch_s"]),
        (f"{config.processes} processes ({many['backend']}): tokens/s", many["tokens_per_s"]),
        (f"{config.processes} processes: s per epoch (steps only)", many["epoch_s"]),
        ("speedup (tokens/s ratio)", result["speedup"]),
        ("largest step-loss difference", f"{result['max_step_loss_difference']:.2e}"),
    ]
    print_table(f"pretraining throughput, 1 vs {config.processes} processes, {config.epochs} epochs", rows)
    write_json(json_path, result)
    return result
