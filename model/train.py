"""The training loop shared by pretraining, finetuning and the SASRec baseline: AdamW with linear warmup,
a validation metric after every epoch, early stopping on it with the best weights restored, a time budget,
resumable checkpoints, a progress bar and a training-curve PNG.

The module trains where it is (pretrain and finetune place it on the process's device). Under torchrun the
step runs inside DistributedDataParallel (gradients averaged across processes), rank 0 validates,
checkpoints and decides when to stop, and every process follows its decisions (model.distributed)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from pinrec.model.distributed import Distributed, current

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100  # linear warmup, then constant
    max_epochs: int = 200
    patience: int = 10  # epochs without a better validation metric before stopping
    time_budget_s: float | None = None  # stop (keeping the best weights) once training took this long
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = one per available CPU
    validate_start: bool = False  # score the start as epoch 0 (finetuning keeps it unless beaten)
    progress: bool = True
    # Shards of the training users, by user id: a global batch is a micro-batch from each (model.distributed).
    # 0: one per training process (a single process keeps its plain user order).
    data_shards: int = 0


@dataclass
class TrainResult:
    best_metric: float
    best_epoch: int
    epochs: int
    seconds: float
    stopped_by: str  # "patience" | "time budget" | "max epochs"
    curve: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, metric, seconds

    def to_dict(self) -> dict:
        return asdict(self)


def set_threads(threads: int = 0) -> int:
    """Use the CPUs this process may run on (a container's quota shows in sched_getaffinity), shared with the
    other training processes on this machine."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    count = threads or max(1, len(os.sched_getaffinity(0)) // local_processes)
    torch.set_num_threads(count)
    return count


class _Step(nn.Module):
    """The step's loss as a module's forward, so that DistributedDataParallel sees the whole computation."""

    def __init__(self, module: nn.Module, step_loss: Callable[[object], torch.Tensor]) -> None:
        super().__init__()
        self.module, self.step_loss = module, step_loss

    def forward(self, batch: object) -> torch.Tensor:
        return self.step_loss(batch)


def _step_function(module: nn.Module, step_loss: Callable[[object], torch.Tensor], group: Distributed):
    if not group.enabled:
        return step_loss
    from torch.nn.parallel import DistributedDataParallel

    # Rank 0's weights go to every process here; parameters a step leaves unused (a frozen part) are fine.
    on_gpu = [group.device] if group.device.type == "cuda" else None
    return DistributedDataParallel(_Step(module, step_loss), device_ids=on_gpu, find_unused_parameters=True)


def fit(
    module: nn.Module,
    parameters: Iterable[nn.Parameter],
    batches: Callable[[int], Iterable],  # epoch -> batches
    step_loss: Callable[[object], torch.Tensor],
    validate: Callable[[], float],  # higher is better
    config: TrainConfig,
    checkpoint: Path | None = None,
    name: str = "train",
    key: str = "",
    generator: torch.Generator | None = None,  # the step's own random draws (negatives), checkpointed too
) -> TrainResult:
    """Train until patience, the time budget or max_epochs. A checkpoint is resumed only when it was written
    with the same key (data and settings: run_key()); another run's is refused. A resumed run goes on with
    the random state it stopped with (torch's, the device's and `generator`'s), so it takes the steps an
    uninterrupted run takes."""
    group = current()
    set_threads(config.threads)
    torch.manual_seed(config.seed)
    parameters = [p for p in parameters if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(config.warmup_steps, 1))
    )
    state = {"epoch": 0, "best_metric": -math.inf, "best_epoch": -1, "curve": [], "seconds": 0.0}
    best_weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if checkpoint is not None and checkpoint.exists():
        # Loaded on the CPU: the states go to the parameters' device as they load (AdamW's step counts stay on
        # the CPU, as in a fresh run, instead of costing a GPU sync each).
        saved = torch.load(checkpoint, weights_only=True, map_location="cpu")
        if saved.get("run_key", "") != key:
            raise ValueError(
                f"checkpoint {checkpoint} was written by another run (different data or settings): "
                "delete it, or pass --checkpoint with a new file"
            )
        module.load_state_dict(saved["module"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        best_weights = saved["best_weights"]
        state = saved["state"]
        _restore_random_state(saved.get("random", {}), generator, group.device)
        log.info("%s: resumed from %s after epoch %d", name, checkpoint, state["epoch"])

    if config.validate_start and state["epoch"] == 0 and state["best_epoch"] < 0:
        state["best_metric"], state["best_epoch"] = _validate(module, validate, group), 0
        log.info("%s before training: validation %.4f", name, state["best_metric"])
    step = _step_function(module, step_loss, group)
    stopped_by = "max epochs"
    started = time.monotonic() - state["seconds"]
    for epoch in range(state["epoch"], config.max_epochs):
        module.train()
        losses, tokens, loop_started = [], 0, time.monotonic()
        progress = config.progress and group.is_main
        bar = tqdm(batches(epoch), desc=f"{name} epoch {epoch + 1}", disable=not progress, leave=False)
        for batch in bar:
            loss = step(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            # Each process's loss is its share of the global mean (times the process count).
            losses.append(group.sum(loss.detach()).item() / group.world_size)
            tokens += getattr(batch, "tokens", 0)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        train_seconds = group.broadcast_float(time.monotonic() - loop_started)
        tokens = int(group.sum(torch.tensor(tokens)).item())  # every process's
        metric = _validate(module, validate, group)
        elapsed = group.broadcast_float(time.monotonic() - started)  # rank 0's clock decides the budget
        loss = sum(losses) / max(len(losses), 1)
        state["curve"].append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "metric": metric,
                "seconds": elapsed,
                "train_seconds": train_seconds,  # the steps alone, validation excluded
                "tokens": tokens,
                "step_losses": losses,
            }
        )
        log.info("%s epoch %d: loss %.4f, validation %.4f (%.0f s)", name, epoch + 1, loss, metric, elapsed)
        if metric > state["best_metric"]:
            state["best_metric"], state["best_epoch"] = metric, epoch + 1
            best_weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
        state["epoch"], state["seconds"] = epoch + 1, elapsed
        if checkpoint is not None and group.is_main:
            random = _random_state(generator, group.device)
            _save_checkpoint(checkpoint, module, optimizer, schedule, best_weights, state, key, random)
        if epoch + 1 - state["best_epoch"] >= config.patience:
            stopped_by = "patience"
            break
        # Stop when one more epoch of the average length would overrun the budget.
        if config.time_budget_s is not None and elapsed * (epoch + 2) / (epoch + 1) > config.time_budget_s:
            stopped_by = "time budget"
            break
    module.load_state_dict(best_weights)
    module.eval()
    return TrainResult(
        state["best_metric"],
        state["best_epoch"],
        state["epoch"],
        state["seconds"],
        stopped_by,
        state["curve"],
    )


def _validate(module: nn.Module, validate: Callable[[], float], group: Distributed) -> float:
    """Rank 0's validation metric, on every process (the others wait for it)."""
    module.eval()
    metric = 0.0
    if group.is_main:
        with torch.no_grad():
            metric = validate()
    return group.broadcast_float(metric)


def run_key(*parts: object) -> str:
    """A digest of what a checkpoint must match to be resumed: the data's fingerprint, the model's and the
    training's settings (not max_epochs or the time budget, which a resumed run may extend)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _random_state(generator: torch.Generator | None, device: torch.device) -> dict[str, torch.Tensor]:
    """The random state a resumed run needs: torch's (dropout), the GPU's, and the step's generator."""
    random = {"torch": torch.get_rng_state()}
    if generator is not None:
        random["generator"] = generator.get_state()
    if device.type == "cuda":
        random["cuda"] = torch.cuda.get_rng_state(device)
    return random


def _restore_random_state(
    random: dict[str, torch.Tensor], generator: torch.Generator | None, device: torch.device
) -> None:
    if "torch" in random:
        torch.set_rng_state(random["torch"])
    if generator is not None and "generator" in random:
        generator.set_state(random["generator"])
    if device.type == "cuda" and "cuda" in random:
        torch.cuda.set_rng_state(random["cuda"], device)


def _save_checkpoint(
    path: Path, module, optimizer, schedule, best_weights, state, key: str, random: dict[str, torch.Tensor]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(
        {
            "module": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "best_weights": best_weights,
            "state": state,
            "run_key": key,
            "random": random,
        },
        partial,
    )
    partial.replace(path)  # a crash mid-save never leaves a torn checkpoint


def plot_curves(curves: dict[str, list[dict]], path: Path, metric_name: str) -> Path:
    """Training loss and validation metric per epoch, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for label, curve in curves.items():
        epochs = [point["epoch"] for point in curve]
        loss_axis.plot(epochs, [point["loss"] for point in curve], label=label)
        metric_axis.plot(epochs, [point["metric"] for point in curve], label=label)
    loss_axis.set(xlabel="epoch", ylabel="training loss (sampled softmax)", title="Training loss")
    metric_axis.set(xlabel="epoch", ylabel=metric_name, title=f"Validation {metric_name}")
    for axis in (loss_axis, metric_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
