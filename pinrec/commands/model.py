"""`pinrec simulate`, `pinrec train`, `pinrec finetune` and `pinrec eval`.

torch, faiss and pandas are imported inside the commands so that `pinrec --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pinrec.settings import Settings

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    simulate = subparsers.add_parser(
        "simulate",
        help="write the synthetic multi-surface world as an event log (model/data/SIMULATION.md)",
    )
    simulate.add_argument(
        "--out", type=Path, required=True, help="folder for events.parquet and items.parquet"
    )
    simulate.add_argument("--small", action="store_true", help="about 50k events instead of about 1M")
    simulate.add_argument("--users", type=int, help="user count (default: 4000, or 420 with --small)")
    simulate.add_argument("--items", type=int, help="catalog size (default: 20000, or 2000 with --small)")
    simulate.add_argument("--days", type=int, help="simulated days (default: 30, or 14 with --small)")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.set_defaults(handler=run_simulate)

    train = subparsers.add_parser(
        "train",
        help="pretrain the backbone and shared head on positive actions of all surfaces",
        description="Pretrain on one process, or data-parallel under torchrun: `torchrun --nproc-per-node N "
        "--no-python pinrec train ...` (each process on its GPU with NCCL, or on the CPU with gloo: "
        "--device; rank 0 validates and writes the checkpoint and the artifact; with --max-restarts, "
        "restarted processes resume from the checkpoint).",
    )
    _data_option(train)
    train.add_argument("--out", type=Path, required=True, help="new artifact directory (must not exist)")
    train.add_argument(
        "--variant", default="pinrec", help="pinrec | pinrec-oc | pinrec-unconditioned | sasrec"
    )
    _training_options(train)
    for name, default, what in (
        ("dim", 64, "model width"),
        ("layers", 2, "transformer blocks"),
        ("heads", 2, "attention heads"),
        ("max-len", 50, "history tokens the model reads"),
        ("hash-tables", 0, "hash item ids into this many smaller tables (0: one table per item)"),
    ):
        train.add_argument(f"--{name}", type=int, default=default, help=f"{what} (default {default})")
    train.add_argument("--dropout", type=float, default=0.5, help="dropout rate (default 0.5)")
    train.set_defaults(handler=run_train)

    finetune = subparsers.add_parser(
        "finetune", help="train a new head for one surface on its impressions (backbone frozen)"
    )
    finetune.add_argument("--artifact", type=Path, required=True, help="the pretrained artifact")
    _data_option(finetune)
    finetune.add_argument("--surface", action="append", required=True, help="surface name (repeatable)")
    finetune.add_argument("--out", type=Path, required=True, help="new artifact directory with the head(s)")
    finetune.add_argument(
        "--unfreeze-backbone",
        action="store_true",
        help="train the backbone and item tower too (changes every surface's results; default: frozen)",
    )
    _training_options(finetune)
    finetune.set_defaults(handler=run_finetune)

    evaluate = subparsers.add_parser("eval", help="evaluate an artifact (protocol A or B/C) on an event log")
    evaluate.add_argument("--artifact", type=Path, required=True)
    _data_option(evaluate)
    evaluate.add_argument("--protocol", choices=["loo", "future"], default="loo")
    evaluate.add_argument("--json", type=Path, help="write the metrics here")
    evaluate.set_defaults(handler=run_eval)


def _data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=_data_location,
        required=True,
        help="an event log folder (pinrec simulate), the sink's event log (a folder, or a URI of any "
        "filesystem pyarrow knows: s3://bucket/events, gs://..., hdfs://...), an S3-Rec .txt, MovieLens "
        "u.data or ratings.csv",
    )


def _data_location(value: str) -> Path | str:
    """A URI stays a string (Path would fold its //); anything else is a local path."""
    return value if "://" in value else Path(value)


def _training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--time-budget-min", type=float, help="stop after this many minutes (best weights kept)"
    )
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPUs available)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="resumable checkpoint file (resumes when present; under torchrun default <out>.checkpoint.pt)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where each process trains: cuda (the process's GPU, cuda:LOCAL_RANK) with NCCL between "
        "processes when each has a GPU of its own, else gloo; cpu with gloo; auto (default): cuda when torch "
        "sees a GPU",
    )
    parser.add_argument(
        "--data-shards",
        type=int,
        default=0,
        help="split the training users into this many shards by id, a global batch taking a micro-batch of "
        "each (default: one per process); one process with --data-shards N trains exactly as N processes",
    )


def _train_config(args: argparse.Namespace):
    from pinrec.model.train import TrainConfig

    budget = args.time_budget_min * 60 if args.time_budget_min else None
    return TrainConfig(
        time_budget_s=budget,
        max_epochs=args.max_epochs,
        seed=args.seed,
        threads=args.threads,
        data_shards=args.data_shards,
    )


def _checkpoint(args: argparse.Namespace, distributed: bool) -> Path | None:
    """--checkpoint, or under torchrun one beside --out: restarted processes resume from it."""
    if args.checkpoint is not None or not distributed:
        return args.checkpoint
    return args.out.with_name(f"{args.out.name}.checkpoint.pt")


def _surface_checkpoint(checkpoint: Path | None, surface: str) -> Path | None:
    """One checkpoint per surface's head: name.pt -> name.<surface>.pt."""
    return (
        None
        if checkpoint is None
        else checkpoint.with_name(f"{checkpoint.stem}.{surface}{checkpoint.suffix}")
    )


def run_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.model.data.simulate import SimulationConfig, simulate

    overrides = {k: v for k, v in (("users", args.users), ("items", args.items), ("days", args.days)) if v}
    config = (
        SimulationConfig.small(seed=args.seed, **overrides)
        if args.small
        else SimulationConfig(seed=args.seed, **overrides)
    )
    event_log = simulate(config)
    event_log.write(args.out)
    print(f"wrote {len(event_log.events):,} events of {event_log.num_users:,} users to {args.out}")
    return 0


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.model.distributed import process_group

    if args.out.exists():
        raise ValueError(f"{args.out} exists; artifacts are immutable, choose a new --out")
    with process_group(args.device) as group:
        return _train(args, settings, group)


def _train(args: argparse.Namespace, settings: Settings, group) -> int:
    from pinrec.model.artifacts import save_trained
    from pinrec.model.data.loaders import load_dataset
    from pinrec.model.data.prepare import prepare
    from pinrec.model.data.sequences import leave_one_out
    from pinrec.model.pretrain import base_config, new_model, pretrain
    from pinrec.model.train import plot_curves

    vocabulary = settings.vocabulary
    data = prepare(load_dataset(args.data, vocabulary), vocabulary)
    split = leave_one_out(data.histories)  # the second-to-last action of each user validates
    config = base_config(
        data,
        dim=args.dim,
        layers=args.layers,
        heads=args.heads,
        max_len=args.max_len,
        hash_tables=args.hash_tables,
        dropout=args.dropout,
    ).with_variant(args.variant)
    model = new_model(config, data, seed=args.seed)
    checkpoint = _checkpoint(args, group.enabled)
    result = pretrain(model, data, split.train_ends, split.valid, _train_config(args), checkpoint=checkpoint)
    if not group.is_main:
        return 0  # rank 0 writes the artifact
    training = result.to_dict() | {
        "processes": group.world_size,
        "backend": group.backend or "single",
        "device": group.device.type,
    }
    metrics = {"validation_ndcg@10": result.best_metric, "training": training}
    save_trained(args.out, model, data, metrics)
    plot_curves({args.variant: result.curve}, args.out / "training-curve.png", "NDCG@10")
    print(f"wrote {args.out} (validation NDCG@10 {result.best_metric:.4f}, {result.seconds:.0f} s)")
    return 0


def run_finetune(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.model.distributed import process_group

    if args.out.exists():
        raise ValueError(f"{args.out} exists; artifacts are immutable, choose a new --out")
    with process_group(args.device) as group:
        return _finetune(args, group)


def _finetune(args: argparse.Namespace, group) -> int:
    import numpy as np

    from pinrec.model.artifacts import load_artifact, save_trained
    from pinrec.model.data.loaders import load_dataset
    from pinrec.model.data.prepare import prepare
    from pinrec.model.finetune import finetune_surface

    artifact = load_artifact(args.artifact)
    vocabulary = artifact.vocabulary
    data = prepare(load_dataset(args.data, vocabulary), vocabulary, item_ids=artifact.item_ids)
    unknown = [s for s in args.surface if s not in vocabulary.surfaces]
    if unknown:
        raise ValueError(
            f"unknown surface {', '.join(unknown)}; the artifact has {', '.join(vocabulary.surfaces)}"
        )
    metrics = dict(artifact.manifest["metrics"])
    every_user = np.arange(len(data.histories.user_ids))
    for surface in args.surface:
        result = finetune_surface(
            artifact.model,
            data,
            vocabulary.surface_code(surface),
            every_user,
            _train_config(args),
            checkpoint=_surface_checkpoint(_checkpoint(args, group.enabled), surface),
            freeze_backbone=not args.unfreeze_backbone,
        )
        metrics[f"finetune_{surface}_hit@10"] = result.best_metric
    if not group.is_main:
        return 0  # rank 0 writes the artifact
    save_trained(args.out, artifact.model, data, metrics)  # data's catalog is the artifact's
    print(f"wrote {args.out} with heads {', '.join(artifact.model.heads.keys())}")
    return 0


def run_eval(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.model.artifacts import load_artifact
    from pinrec.model.config import DAY_MS
    from pinrec.model.data.loaders import load_dataset
    from pinrec.model.data.prepare import prepare
    from pinrec.model.data.sequences import future_window, leave_one_out
    from pinrec.model.evaluate import leave_one_out_metrics, next_queries
    from pinrec.model.future_eval import future_window_metrics, outcome_control_metrics

    artifact = load_artifact(args.artifact)
    data = prepare(
        load_dataset(args.data, artifact.vocabulary), artifact.vocabulary, item_ids=artifact.item_ids
    )
    model, index = artifact.model, artifact.index
    if args.protocol == "loo":
        test = leave_one_out(data.histories).test
        queries = next_queries(model, data.histories, test, model.config.any_outcome, data.primary_surface)
        metrics = leave_one_out_metrics(index, queries, data.histories, test)
    else:
        test = future_window(data.histories, 7 * DAY_MS).test
        outcomes, shares = data.outcome_mix()
        metrics = future_window_metrics(
            model, index, data.histories, test, outcomes, shares, data.primary_surface
        )
        metrics |= outcome_control_metrics(model, index, data.histories, test, outcomes, data.primary_surface)
    text = json.dumps({"artifact": str(args.artifact), "protocol": args.protocol, **metrics}, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0
