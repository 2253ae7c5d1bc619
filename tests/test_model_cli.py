"""The model's command line end to end on a small synthetic world: simulate, train, finetune, eval, and a
resumed training run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pinrec.featurestore.schema import Vocabulary
from pinrec.model.artifacts import load_artifact
from pinrec.model.data.eventlog import EventLog
from pinrec.model.data.prepare import prepare
from pinrec.model.data.sequences import leave_one_out
from pinrec.model.pretrain import base_config, new_model, pretrain
from pinrec.model.train import TrainConfig
from tests.helpers import cli_env, run_pinrec


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    env = cli_env(out / "state")
    done = run_pinrec(
        env, "simulate", "--small", "--users", "150", "--items", "500", "--days", "7", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    return out


def test_simulate_train_finetune_eval(world, tmp_path):
    env = cli_env(tmp_path / "state")
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    common = ("--max-epochs", "2", "--threads", "1")
    done = run_pinrec(
        env, "train", "--data", str(world), "--out", str(v1), "--dim", "32", "--max-len", "30", *common
    )
    assert done.returncode == 0, done.stderr
    assert (v1 / "training-curve.png").stat().st_size > 0
    done = run_pinrec(
        env,
        "finetune",
        "--artifact",
        str(v1),
        "--data",
        str(world),
        "--surface",
        "search",
        "--out",
        str(v2),
        *common,
    )
    assert done.returncode == 0, done.stderr
    artifact = load_artifact(v2)
    assert artifact.heads == ["shared", "search"]
    assert artifact.manifest["data_fingerprint"] == load_artifact(v1).manifest["data_fingerprint"]
    report = tmp_path / "eval.json"
    done = run_pinrec(
        env,
        "eval",
        "--artifact",
        str(v2),
        "--data",
        str(world),
        "--protocol",
        "future",
        "--json",
        str(report),
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads(report.read_text())
    assert 0 <= metrics["recall@100_budgeted"] <= 1 and metrics["cases"] > 0


def test_existing_output_and_missing_artifact_are_refused_clearly(world, tmp_path):
    env = cli_env(tmp_path / "state")
    done = run_pinrec(env, "train", "--data", str(world), "--out", str(world), "--max-epochs", "1")
    assert done.returncode == 1 and "exists" in done.stderr
    done = run_pinrec(env, "eval", "--artifact", str(tmp_path), "--data", str(world))
    assert done.returncode == 1 and "not a model artifact" in done.stderr


def test_training_resumes_from_its_checkpoint(world, tmp_path):
    data = prepare(EventLog.read(world), Vocabulary())
    split = leave_one_out(data.histories)
    checkpoint = tmp_path / "run.ckpt"
    model = new_model(base_config(data, dim=16, max_len=20), data)
    first = pretrain(
        model,
        data,
        split.train_ends,
        split.valid,
        TrainConfig(max_epochs=1, progress=False),
        checkpoint=checkpoint,
    )
    assert first.epochs == 1 and checkpoint.exists()
    resumed = new_model(base_config(data, dim=16, max_len=20), data, seed=99)
    second = pretrain(
        resumed,
        data,
        split.train_ends,
        split.valid,
        TrainConfig(max_epochs=2, progress=False),
        checkpoint=checkpoint,
    )
    assert second.epochs == 2 and len(second.curve) == 2
    assert second.curve[0] == first.curve[0]  # the first epoch was not trained again
    assert np.isfinite(second.best_metric)
