"""`pinrec bench train`: pretraining throughput of one process against N data-parallel processes (torchrun),
measured in the same run on the same data and global batches: history tokens per second of the training
steps (validation excluded), seconds per epoch, the ratio to the reference, and how far apart the loss
curves are (1 and N processes on one device should agree to float precision: `--data-shards N` in every
run, dropout off).

The reference is always one process on the CPU. With `--device cuda` (the GPU check) the same configuration
also trains as one process and as N processes on the GPUs (NCCL when each process has a GPU of its own, gloo
when they share one)."""

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
    device: str = "cpu"  # where the compared runs train; the reference is one process on the CPU
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


def _train(config: TrainingBenchConfig, data: Path, processes: int, device: str) -> dict:
    """One pretraining run with this many processes on this device; its measured throughput."""
    out = config.out_dir / f"artifact-{device}-{processes}"
    shutil.rmtree(out, ignore_errors=True)
    out.with_name(f"{out.name}.checkpoint.pt").unlink(missing_ok=True)  # torchrun's default: start afresh
    command = [_bin("pinrec"), "train", "--data", str(data), "--out", str(out), "--seed", "0"]
    command += ["--max-epochs", str(config.epochs), "--dim", str(config.dim), "--dropout", "0"]
    command += ["--data-shards", str(config.processes), "--device", device]  # the same global batches
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
        "device": device,
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
    plan = [("cpu", 1), ("cpu", config.processes)]
    if config.device != "cpu":
        plan = [("cpu", 1), (config.device, 1), (config.device, config.processes)]
    runs = [_train(config, data, processes, device) for device, processes in plan]
    losses = [np.asarray(run.pop("step_losses")) for run in runs]
    reference = runs[0]
    for run in runs:
        run["ratio_to_reference"] = round(run["tokens_per_s"] / reference["tokens_per_s"], 3)
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "reference": "1 process on the CPU",
        "runs": runs,
        "steps": len(losses[0]),
        # 1 against N processes on the same device: the same training, to float precision.
        "max_step_loss_difference": float(np.abs(losses[-2] - losses[-1]).max()),
    }
    if config.device != "cpu":  # the device's kernels against the CPU's, one process each
        result["max_step_loss_difference_to_cpu"] = float(np.abs(losses[0] - losses[1]).max())
    rows = [("steps (same global batches in every run)", result["steps"])]
    for run in runs:
        name = f"{run['processes']} process{'es' if run['processes'] > 1 else ''} on {run['device']}"
        name += f" ({run['backend']})" if run["processes"] > 1 else ""
        rows += [
            (f"{name}: tokens/s", run["tokens_per_s"]),
            (f"{name}: s per epoch (steps only)", run["epoch_s"]),
            (f"{name}: ratio to the reference", run["ratio_to_reference"]),
        ]
    rows.append(
        (
            f"largest step-loss difference, 1 vs {config.processes} processes",
            f"{result['max_step_loss_difference']:.2e}",
        )
    )
    if "max_step_loss_difference_to_cpu" in result:
        rows.append(
            ("largest step-loss difference, GPU vs CPU", f"{result['max_step_loss_difference_to_cpu']:.2e}")
        )
    title = f"pretraining throughput, {config.epochs} epochs, d={config.dim}; reference: 1 process on the CPU"
    print_table(title, rows)
    write_json(json_path, result)
    return result
