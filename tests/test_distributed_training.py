"""Data-parallel training under torchrun (gloo on CPU): two processes give the loss of every step, the
validation metric and the weights of one process with the same global batch (`--data-shards 2`) and seed,
for pretraining and for finetuning (dropout off: dropout draws differ between processes); the two-process
artifact loads and answers requests; a killed process makes torchrun restart the run, which resumes from
rank 0's checkpoint; and the sink's event log is read through a pyarrow filesystem URI.

The device and backend choice is checked here against what torch reports; training on GPUs runs only where
torch sees one (the GPU check, never in CI)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pinrec.featurestore.event_log import DAY_MS, day_name, file_name
from pinrec.featurestore.schema import EVENT_LOG_SCHEMA
from pinrec.model.data.loaders import load_dataset
from pinrec.model.distributed import (
    Distributed,
    _agreed_backend,
    choose_backend,
    training_device,
    user_shards,
)
from pinrec.model.train import TrainConfig, fit, run_key
from pinrec.serving.engine import LoadedModel, Recommender
from pinrec.serving.request import parse_instance
from pinrec.serving.settings import ServeSettings
from tests.helpers import BIN, REPO, pinrec

MODEL = ["--dim", "32", "--dropout", "0"]
SHARED = ["--data-shards", "2", "--seed", "3", "--device", "cpu"]
CPU, GPU0, GPU1 = torch.device("cpu"), torch.device("cuda", 0), torch.device("cuda", 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("ddp") / "data"
    pinrec("simulate", "--small", "--users", "200", "--items", "500", "--days", "7", "--out", data)
    return data


@pytest.fixture(scope="module")
def trained(world: Path) -> dict[int, Path]:
    """The same pretraining and home-feed finetuning with one and with two processes."""
    out = {}
    for processes in (1, 2):
        base = world.parent / f"pretrained-{processes}"
        pinrec(
            "train", "--data", world, "--out", base, "--max-epochs", "3", *MODEL, *SHARED, processes=processes
        )
        out[processes] = world.parent / f"finetuned-{processes}"
        pinrec(
            "finetune",
            "--artifact",
            base,
            "--data",
            world,
            "--surface",
            "home",
            "--out",
            out[processes],
            "--max-epochs",
            "3",
            *SHARED,
            processes=processes,
        )
    return out


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_two_processes_pretrain_as_one_over_the_same_global_batches(trained: dict[int, Path]) -> None:
    one, two = (manifest(trained[p].parent / f"pretrained-{p}")["metrics"] for p in (1, 2))
    assert two["training"]["processes"] == 2 and two["training"]["backend"] == "gloo"
    assert one["training"]["device"] == two["training"]["device"] == "cpu"
    curves = [m["training"]["curve"] for m in (one, two)]
    assert [len(c) for c in curves] == [3, 3]
    for epoch_one, epoch_two in zip(*curves, strict=True):
        steps_one, steps_two = epoch_one["step_losses"], epoch_two["step_losses"]
        print(f"epoch {epoch_one['epoch']}: steps 1 process {steps_one}\n         2 processes {steps_two}")
        assert len(steps_one) == len(steps_two) >= 2
        assert np.allclose(steps_one, steps_two, rtol=1e-4, atol=1e-5)
        assert epoch_one["metric"] == pytest.approx(epoch_two["metric"], abs=1e-4)
        assert epoch_one["tokens"] == epoch_two["tokens"] > 0
    assert one["validation_ndcg@10"] == pytest.approx(two["validation_ndcg@10"], abs=1e-4)


def test_two_processes_finetune_as_one_and_the_weights_agree(trained: dict[int, Path]) -> None:
    one, two = (manifest(trained[p])["metrics"] for p in (1, 2))
    assert one["finetune_home_hit@10"] == pytest.approx(two["finetune_home_hit@10"], abs=1e-4)
    weights = [LoadedModel.load(trained[p]).model.state_dict() for p in (1, 2)]
    assert weights[0].keys() == weights[1].keys()
    worst = max(float((weights[0][k].double() - weights[1][k].double()).abs().max()) for k in weights[0])
    print(f"largest weight difference, 1 vs 2 processes: {worst:.2e}")
    assert worst < 1e-3


def test_two_nodes_rendezvous_and_train_as_one_process(world: Path, trained: dict[int, Path]) -> None:
    """`torchrun --nnodes 2` on two "machines" (two torchrun agents here, one process each, meeting through
    the c10d rendezvous as nodes of a cluster do): the same steps as one process with the same shards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = world.parent / "two-nodes"
    command = [str(BIN / "torchrun"), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d"]
    command += [
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=two-nodes",
        "--no-python",
        str(BIN / "pinrec"),
    ]
    command += ["train", "--data", str(world), "--out", str(out), "--max-epochs", "3", *MODEL, *SHARED]
    nodes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in "ab"
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    two = manifest(out)["metrics"]["training"]
    one = manifest(trained[1].parent / "pretrained-1")["metrics"]["training"]
    assert (two["processes"], two["backend"]) == (2, "gloo")
    steps = [[x for epoch in run["curve"] for x in epoch["step_losses"]] for run in (one, two)]
    assert np.allclose(*steps, rtol=1e-4, atol=1e-5)


def test_the_two_process_artifact_serves(trained: dict[int, Path]) -> None:
    model = LoadedModel.load(trained[2])
    recommender = Recommender(ServeSettings(trained[2]), model)
    items = model.artifact.item_ids[:5].tolist()
    instance = {"history": {"items": items}, "k": 10, "budget": {"save": 0.6, "click": 0.4}}
    request = parse_instance(instance, "home", recommender.limits(model), int(time.time() * 1000))
    answer = recommender.recommend(model, request, "home", recommender.read_histories([request])[0])
    assert len(answer.item_ids) == 10 == len(set(answer.item_ids.tolist()))
    assert not answer.cold_start


def test_a_stopped_two_process_run_resumes_from_rank_zeros_checkpoint(world: Path) -> None:
    """What a restart after a lost process does (torchrun --max-restarts starts every process again): the
    processes load the checkpoint rank 0 wrote beside --out after its last epoch and go on from there."""
    out = world.parent / "resumed"
    checkpoint = out.with_name(f"{out.name}.checkpoint.pt")
    pinrec(
        "train",
        "--data",
        world,
        "--out",
        world.parent / "first-part",
        "--checkpoint",
        checkpoint,
        "--max-epochs",
        "2",
        *MODEL,
        processes=2,
    )
    assert checkpoint.exists()
    result = pinrec("train", "--data", world, "--out", out, "--max-epochs", "4", *MODEL, processes=2)
    assert (
        "resumed from" in result.stdout + result.stderr and "after epoch 2" in result.stdout + result.stderr
    )
    curve = manifest(out)["metrics"]["training"]["curve"]
    assert [c["epoch"] for c in curve] == [1, 2, 3, 4], (
        "the first two epochs come from the checkpoint, none is lost or repeated"
    )


def test_a_resumed_run_takes_the_steps_of_an_uninterrupted_one(world: Path) -> None:
    """The checkpoint carries the random state (dropout's, the sampled negatives' generator), so epochs 3
    and 4 after a stop at epoch 2 are those of a run that never stopped, step by step (dropout on)."""
    model = ["--dim", "32", "--dropout", "0.3", "--device", "cpu", "--threads", "1"]
    straight = world.parent / "straight"
    pinrec("train", "--data", world, "--out", straight, "--max-epochs", "4", *model)
    checkpoint = world.parent / "stopped.checkpoint.pt"
    common = ["--data", world, "--checkpoint", checkpoint, *model]
    pinrec("train", "--out", world.parent / "stopped", "--max-epochs", "2", *common)
    pinrec("train", "--out", world.parent / "continued", "--max-epochs", "4", *common)
    curves = [
        manifest(world.parent / name)["metrics"]["training"]["curve"] for name in ("straight", "continued")
    ]
    assert [c["epoch"] for c in curves[1]] == [1, 2, 3, 4]
    for uninterrupted, resumed in zip(*curves, strict=True):
        assert resumed["step_losses"] == uninterrupted["step_losses"], f"epoch {resumed['epoch']}"
        assert resumed["metric"] == uninterrupted["metric"]


def test_a_killed_process_is_restarted_by_torchrun_and_the_run_resumes(world: Path) -> None:
    """torchrun --max-restarts: one process is SIGKILLed after rank 0 wrote a checkpoint; torchrun restarts
    both, and they resume from it (model.distributed keys the store by restart, without which the restarted
    processes read the dead generation's addresses)."""
    out = world.parent / "killed"
    checkpoint = out.with_name(f"{out.name}.checkpoint.pt")
    command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "--max-restarts=2", "--no-python"]
    command += [str(BIN / "pinrec"), "train", "--data", str(world), "--out", str(out), "--max-epochs", "40"]
    command += [*MODEL, "--time-budget-min", "5"]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert checkpoint.exists(), "rank 0 writes a checkpoint beside --out after each epoch"
        workers = psutil.Process(run.pid).children(recursive=True)
        next(p for p in workers if p.environ().get("RANK") == "1").kill()
        output, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            for child in psutil.Process(run.pid).children(recursive=True):
                child.kill()
            run.kill()
    assert run.returncode == 0, output[-4000:]
    assert "resumed from" in output
    curve = manifest(out)["metrics"]["training"]["curve"]
    assert [c["epoch"] for c in curve] == list(range(1, len(curve) + 1)), "no epoch lost or repeated"


def test_users_are_dealt_to_shards_by_id_alone_and_shards_to_ranks_in_runs() -> None:
    ids = np.arange(10_000, dtype=np.int64) * 7919
    shards = user_shards(ids, 4)
    assert set(np.unique(shards)) == {0, 1, 2, 3}
    assert np.array_equal(user_shards(ids[::-1], 4), shards[::-1])
    assert np.bincount(shards).min() > 2000
    assert [list(Distributed(rank, 2).owned_shards(4)) for rank in (0, 1)] == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="multiple of the 2 training processes"):
        Distributed(0, 2).owned_shards(3)


def test_training_reads_the_sinks_event_log_through_a_filesystem_uri(world: Path, tmp_path: Path) -> None:
    """The simulated events laid out as `pinrec sink` writes them (date=YYYY-MM-DD/part-*.parquet), read
    through pyarrow's filesystem for a file:// URI, the way an s3:// or gs:// log is read."""
    events = pq.read_table(world / "events.parquet").cast(EVENT_LOG_SCHEMA).to_pandas()
    for day, part in events.groupby(events["ts_ms"] // DAY_MS):
        folder = tmp_path / "log" / f"date={day_name(int(day))}"
        folder.mkdir(parents=True)
        table = pa.Table.from_pandas(part, schema=EVENT_LOG_SCHEMA, preserve_index=False)
        pq.write_table(table, folder / file_name(0, 0, len(part)))
    uri = f"file://{tmp_path / 'log'}"
    loaded = load_dataset(uri)
    assert len(loaded.events) == len(events) and loaded.info["uri"] == uri
    out = tmp_path / "from-uri"
    pinrec("train", "--data", uri, "--out", out, "--max-epochs", "1", *MODEL)
    assert manifest(out)["metrics"]["training"]["epochs"] == 1
    missing = f"file://{tmp_path / 'no-log'}"
    command = [str(BIN / "pinrec"), "train", "--data", missing, "--out", str(tmp_path / "none")]
    refused = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"cannot read the event log at {missing}" in refused.stderr and "credentials" in refused.stderr


def test_a_checkpoint_of_another_run_is_refused_not_resumed(tmp_path: Path) -> None:
    """The default checkpoint beside --out outlives a run: a later run with other data or settings must not
    quietly continue from it."""
    module = torch.nn.Linear(2, 1)

    def train(key: str, epochs: int) -> None:
        fit(
            module,
            module.parameters(),
            lambda epoch: [torch.ones(4, 2)],
            lambda batch: module(batch).pow(2).mean(),
            lambda: 0.0,
            TrainConfig(max_epochs=epochs, progress=False, threads=1),
            tmp_path / "run.checkpoint.pt",
            key=key,
        )

    train(run_key("data A", {"dim": 32}), epochs=1)
    train(run_key("data A", {"dim": 32}), epochs=2)  # the same run, extended: resumes
    with pytest.raises(ValueError, match="written by another run"):
        train(run_key("data B", {"dim": 32}), epochs=3)


def test_the_device_and_the_backend_follow_what_torch_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto trains on a GPU when torch sees one; each process takes the GPU of its local rank (round robin
    when processes outnumber GPUs); NCCL only when every process has a GPU of its own (NCCL refuses two
    processes on one GPU), gloo otherwise, with our collectives' tensors on the CPU for gloo."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device("auto", local_rank=1) == training_device("cpu") == CPU
    with pytest.raises(ValueError, match="torch sees no GPU.*use --device cpu or auto"):
        training_device("cuda")
    with pytest.raises(ValueError, match="choose one of auto, cpu, cuda"):
        training_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert training_device("auto", local_rank=1) == GPU1
    assert training_device("cuda", local_rank=2) == GPU0
    assert training_device("cpu", local_rank=1) == CPU
    assert choose_backend(GPU0, local_processes=2, gpus=2) == "nccl"
    assert choose_backend(GPU0, local_processes=2, gpus=1) == "gloo"
    assert choose_backend(CPU, local_processes=2, gpus=2) == "gloo"
    assert Distributed(0, 2, 0, "nccl", GPU1).collective_device == GPU1
    assert Distributed(0, 2, 0, "gloo", GPU1).collective_device == CPU


def test_nccl_only_when_every_process_can_use_it() -> None:
    """Each process judges its own machine; a machine without GPUs (or with fewer than its processes) makes
    the whole group take gloo instead of hanging in a group whose processes chose different backends."""
    for theirs, agreed in (("nccl", "nccl"), ("gloo", "gloo")):
        store = torch.distributed.HashStore()
        store.set("backend/1", theirs)
        assert _agreed_backend(store, rank=0, world_size=2, mine="nccl") == agreed
    store = torch.distributed.HashStore()
    store.set("backend/0", "nccl")
    assert _agreed_backend(store, rank=1, world_size=2, mine="gloo") == "gloo"


def test_asking_for_a_gpu_where_torch_sees_none_is_an_error_that_says_what_to_do(
    world: Path, tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    command = [
        str(BIN / "pinrec"),
        "train",
        "--data",
        str(world),
        "--out",
        str(tmp_path / "a"),
        "--device",
        "cuda",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "torch sees no GPU" in result.stderr and "--device cpu" in result.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU check: needs a GPU (never in CI)")
def test_on_gpus_two_processes_train_as_one_and_as_the_cpu(world: Path) -> None:
    """The same pretraining on the GPU(s) with one and with two processes (NCCL with a GPU each, gloo when
    they share one), against the CPU run: the same draws, so the losses agree up to the kernels' rounding."""
    runs = {}
    for device, processes in (("cpu", 1), ("cuda", 1), ("cuda", 2)):
        out = world.parent / f"gpu-check-{device}-{processes}"
        args = ["--max-epochs", "2", *MODEL, "--data-shards", "2", "--seed", "3", "--device", device]
        pinrec("train", "--data", world, "--out", out, *args, processes=processes)
        runs[device, processes] = manifest(out)["metrics"]["training"]
    gpus = torch.cuda.device_count()
    assert runs["cuda", 2]["backend"] == ("nccl" if gpus >= 2 else "gloo")
    assert runs["cuda", 1]["device"] == runs["cuda", 2]["device"] == "cuda"
    losses = {key: [x for epoch in run["curve"] for x in epoch["step_losses"]] for key, run in runs.items()}
    assert np.allclose(losses["cuda", 1], losses["cuda", 2], rtol=1e-3, atol=1e-3)
    assert np.allclose(losses["cpu", 1], losses["cuda", 1], rtol=1e-2, atol=1e-2)
    LoadedModel.load(world.parent / "gpu-check-cuda-2")  # the artifact is written from the CPU and loads


def test_bench_train_with_cuda_adds_gpu_runs_to_the_cpu_reference(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The GPU check's benchmark plan and report, its training runs faked (they need a GPU): one CPU process
    is the reference, then 1 and N processes on the GPUs, each as a ratio to it; the 1-vs-N difference is
    taken on the GPU, and the GPU-vs-CPU difference beside it."""
    from pinrec.bench import training

    def run(config, data, processes: int, device: str) -> dict:
        speed = (10.0 if device == "cuda" else 1.0) * processes
        losses = [2.0, 1.0 + (1e-3 if device == "cuda" else 0.0)]
        return {
            "processes": processes,
            "device": device,
            "backend": "nccl" if processes > 1 else "single",
        } | {"tokens": 1000, "tokens_per_s": 1000 * speed, "epoch_s": 1.0 / speed, "step_losses": losses}

    monkeypatch.setattr(training, "_train", run)
    monkeypatch.setattr(training, "_world", lambda config: tmp_path)
    config = training.TrainingBenchConfig(device="cuda", processes=2, out_dir=tmp_path)
    result = training.run_training_bench(config, tmp_path / "train.json")
    assert [(r["device"], r["processes"]) for r in result["runs"]] == [("cpu", 1), ("cuda", 1), ("cuda", 2)]
    assert [r["ratio_to_reference"] for r in result["runs"]] == [1.0, 10.0, 20.0]
    assert result["max_step_loss_difference"] == 0.0
    assert result["max_step_loss_difference_to_cpu"] == pytest.approx(1e-3)
    assert json.loads((tmp_path / "train.json").read_text())["reference"] == "1 process on the CPU"
    assert "2 processes on cuda (nccl): ratio to the reference" in capsys.readouterr().out
