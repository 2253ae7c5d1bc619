"""The promotion gate (`pinrec promote`, model/gate.py) on hand-made artifacts (a manifest.json with the
metrics `pinrec train` and `pinrec finetune` write): a better candidate is promoted and the serving link
re-pointed, a worse one or one that lacks a metric is refused and the link left alone, a first candidate is
promoted, the tolerance holds, different training data is said, and the command's exit status tells which."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pinrec.model.gate import GATE_RECORD, decide, gate
from tests.helpers import cli_env, run_pinrec

SERVED_METRICS = {
    "validation_ndcg@10": 0.120,
    "training": {"best_metric": 0.120, "seconds": 95.0, "epochs": 12},  # a run's record, never gated
    "finetune_home_hit@10": 0.400,
    "finetune_search_hit@10": 0.300,
}


def artifact(root: Path, name: str, metrics: dict, fingerprint: str = "f" * 32) -> Path:
    """An artifact directory as far as the gate reads it: its manifest."""
    path = root / "releases" / name
    path.mkdir(parents=True)
    manifest = {"format": 2, "version": name, "data_fingerprint": fingerprint, "metrics": metrics}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, Path]:
    """The serving link (models/current) pointing at a served artifact, as the model claim holds them."""
    served = artifact(tmp_path, "v1", SERVED_METRICS)
    link = tmp_path / "current"
    link.symlink_to("releases/v1")
    return link, served


def with_metrics(**changes: float | None) -> dict:
    metrics = {**SERVED_METRICS, **changes}
    return {name: value for name, value in metrics.items() if value is not None}


def test_a_better_candidate_is_promoted_and_the_link_re_pointed(served: tuple[Path, Path]) -> None:
    link, old = served
    candidate = artifact(link.parent, "v2", with_metrics(**{"validation_ndcg@10": 0.130}))

    decision = gate(candidate, link)

    assert decision.promoted
    assert os.readlink(link) == "releases/v2"  # relative: valid wherever the claim is mounted
    assert Path(decision.serving) == old.resolve()
    assert [(c.metric, c.serving, c.candidate) for c in decision.comparisons] == [
        ("validation_ndcg@10", 0.120, 0.130),
        ("finetune_home_hit@10", 0.400, 0.400),
        ("finetune_search_hit@10", 0.300, 0.300),
    ]
    record = json.loads((candidate / GATE_RECORD).read_text())
    assert record["promoted"] and record["serving"] == str(old.resolve())
    assert sorted(p.name for p in link.parent.iterdir()) == ["current", "releases"]  # no temporary left


def test_a_worse_candidate_is_refused_and_the_link_unchanged(served: tuple[Path, Path]) -> None:
    link, _ = served
    candidate = artifact(link.parent, "v2", with_metrics(**{"finetune_search_hit@10": 0.290}))

    decision = gate(candidate, link)

    assert not decision.promoted
    assert "finetune_search_hit@10 by 0.0100" in decision.reason
    assert os.readlink(link) == "releases/v1"
    assert not json.loads((candidate / GATE_RECORD).read_text())["promoted"]


def test_the_first_candidate_is_promoted_when_nothing_is_served(tmp_path: Path) -> None:
    candidate = artifact(tmp_path, "v1", SERVED_METRICS)
    link = tmp_path / "current"

    decision = gate(candidate, link)

    assert decision.promoted and decision.serving is None
    assert "nothing is served" in decision.reason
    assert os.readlink(link) == "releases/v1"


@pytest.mark.parametrize(("tolerance", "promoted"), [(0.0, False), (0.005, False), (0.02, True)])
def test_the_tolerance_admits_a_small_drop_only(
    served: tuple[Path, Path], tolerance: float, promoted: bool
) -> None:
    link, _ = served
    candidate = artifact(link.parent, "v2", with_metrics(**{"finetune_home_hit@10": 0.390}))
    assert decide(candidate, link, tolerance=tolerance).promoted is promoted


def test_a_candidate_lacking_a_served_metric_is_refused(served: tuple[Path, Path]) -> None:
    link, _ = served
    candidate = artifact(link.parent, "v2", with_metrics(**{"finetune_search_hit@10": None}))

    decision = gate(candidate, link)

    assert not decision.promoted
    assert decision.reason == "the candidate lacks finetune_search_hit@10, which the served artifact has"
    assert os.readlink(link) == "releases/v1"


def test_only_the_named_metrics_are_gated(served: tuple[Path, Path]) -> None:
    link, _ = served
    candidate = artifact(link.parent, "v2", with_metrics(**{"finetune_search_hit@10": 0.1}))
    decision = decide(candidate, link, metrics=["validation_ndcg@10", "finetune_home_hit@10"])
    assert decision.promoted
    assert [c.metric for c in decision.comparisons] == ["validation_ndcg@10", "finetune_home_hit@10"]
    with pytest.raises(ValueError, match="no artifact has the metric recall@100"):
        decide(candidate, link, metrics=["recall@100"])


def test_different_training_data_is_said_and_the_numbers_still_decide(served: tuple[Path, Path]) -> None:
    link, _ = served
    candidate = artifact(link.parent, "v2", SERVED_METRICS, fingerprint="a" * 32)
    decision = decide(candidate, link)
    assert decision.promoted
    assert decision.data.startswith("trained and validated on different data")
    same = artifact(link.parent, "v3", SERVED_METRICS)
    assert decide(same, link).data == "both trained and validated on the same data"


def test_a_serving_path_that_is_not_a_symlink_is_an_error(tmp_path: Path) -> None:
    candidate = artifact(tmp_path, "v2", SERVED_METRICS)
    (tmp_path / "current").mkdir()
    with pytest.raises(ValueError, match="is not a symlink"):
        decide(candidate, tmp_path / "current")


def promote(link: Path, candidate: Path, *args: str):
    return run_pinrec(
        cli_env(link.parent / "state"),
        "promote",
        "--candidate",
        str(candidate),
        "--serving",
        str(link),
        *args,
        timeout_s=60,
    )


def test_the_command_exits_0_when_promoted_3_when_refused_1_on_errors(served: tuple[Path, Path]) -> None:
    link, _ = served
    worse = artifact(link.parent, "v2", with_metrics(**{"validation_ndcg@10": 0.100}))
    refused = promote(link, worse, "--json", str(link.parent / "decision.json"))
    assert refused.returncode == 3, refused.stderr
    (line,) = refused.stdout.splitlines()
    assert "refused" in line and "validation_ndcg@10 0.1200 -> 0.1000 (-0.0200)" in line
    assert "finetune_home_hit@10 0.4000 -> 0.4000" in line and "finetune_search_hit@10" in line
    assert not json.loads((link.parent / "decision.json").read_text())["promoted"]
    assert os.readlink(link) == "releases/v1"

    better = artifact(link.parent, "v3", with_metrics(**{"validation_ndcg@10": 0.125}))
    dry = promote(link, better, "--dry-run")
    assert dry.returncode == 0 and "would be promoted (dry run" in dry.stdout
    assert os.readlink(link) == "releases/v1" and not (better / GATE_RECORD).exists()
    promoted = promote(link, better)
    assert promoted.returncode == 0, promoted.stderr
    assert os.readlink(link) == "releases/v3"

    empty = link.parent / "releases" / "v4"
    empty.mkdir()
    failed = promote(link, empty)
    assert failed.returncode == 1
    assert "is not a model artifact (no manifest.json); train one with `pinrec train`" in failed.stderr
    assert os.readlink(link) == "releases/v3"
