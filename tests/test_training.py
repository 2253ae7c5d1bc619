"""Training and evaluation details that decide model quality: what the network computes at initialisation,
where item popularity comes from, exact validation against the faiss path, the "any outcome" condition,
fair protocol-B scoring of an unconditioned model, and the benchmark's mean over seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pinrec.bench.model import mean_over_seeds
from pinrec.featurestore.schema import Vocabulary
from pinrec.model.data.prepare import prepare
from pinrec.model.data.sequences import Histories, future_window, leave_one_out, recent_histories
from pinrec.model.data.simulate import SimulationConfig, simulate
from pinrec.model.evaluate import exact_metrics, item_index, leave_one_out_metrics, next_queries
from pinrec.model.finetune import finetune_surface
from pinrec.model.future_eval import FutureEvalSettings, future_window_metrics
from pinrec.model.network import _sparse_rows
from pinrec.model.pretrain import base_config, new_model, pretrain, training_counts
from pinrec.model.train import TrainConfig


@pytest.fixture(scope="module")
def data():
    return prepare(
        simulate(SimulationConfig.small(users=120, items=400, days=7), progress=False), Vocabulary()
    )


def _model(data, variant="pinrec", **overrides):
    config = base_config(data, dim=32, layers=2, heads=2, max_len=20, dropout=0.0, **overrides)
    return new_model(config.with_variant(variant), data, seed=0)


def test_a_new_model_starts_as_plain_sasrec_parts(data):
    """Zero-initialised content embeddings and head output: the item is its normalised ID row, the query is
    normalize(h)."""
    model = _model(data)
    assert model.items.content_bag is not None  # the simulated catalog has content features
    ids = model.items.id_embedding(torch.arange(1, data.catalog.size + 1))
    assert torch.allclose(model.items.all_items(), F.normalize(ids, dim=-1), atol=1e-6)
    h = torch.randn(6, 32)
    conditions = torch.zeros(6, dtype=torch.long)
    query = model.query(h, conditions + model.config.any_outcome, conditions, conditions)
    assert torch.allclose(query, F.normalize(h, dim=-1), atol=1e-6)


def test_content_bag_sums_the_sparse_columns_like_a_dense_product():
    dense = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 2.0]])
    columns, weights = _sparse_rows(dense)
    assert columns.tolist() == [[0, 0], [1, 3], [4, 0]]  # 1-based columns, 0 pads
    table = torch.randn(5, 3)
    bags = F.embedding_bag(columns, table, per_sample_weights=weights, mode="sum", padding_idx=0)
    assert torch.allclose(bags, dense @ table[1:], atol=1e-6)


def test_the_newest_token_sits_at_the_same_position_however_much_padding(data):
    model = _model(data).eval()
    rows = np.arange(3)
    ends = data.histories.offsets[rows] + 6
    narrow = recent_histories(data.histories, rows, ends, 20)
    wide = {k: torch.cat([torch.zeros(3, 4, dtype=v.dtype), v], 1) for k, v in narrow.to_dict().items()}
    wide["times_ms"][:, :4] = narrow.times[:, :1]
    with torch.no_grad():
        assert torch.allclose(
            model.encode(**narrow.to_dict())[0][:, -1], model.encode(**wide)[0][:, -1], atol=1e-5
        )


def test_item_counts_for_log_q_come_from_training_events_only():
    histories = Histories(
        user_ids=np.array([1, 2]),
        offsets=np.array([0, 4, 7]),
        items=np.array([1, 2, 3, 3, 2, 2, 1]),
        actions=np.zeros(7, dtype=np.int64),
        surfaces=np.zeros(7, dtype=np.int64),
        times=np.arange(7, dtype=np.int64),
    )
    train_ends = np.array([2, 5])  # user 1 trains on items 1, 2; user 2 on item 2
    assert training_counts(histories, train_ends, 3).tolist() == [0, 1, 2, 0]


def test_exact_validation_ranks_like_the_faiss_path(data):
    model = _model(data).eval()
    split = leave_one_out(data.histories)
    queries = next_queries(model, data.histories, split.test, model.config.any_outcome, 0)
    by_index = leave_one_out_metrics(item_index(model), queries, data.histories, split.test)
    exact = exact_metrics(queries, model.items.all_items(), data.histories, split.test)
    assert exact == pytest.approx(by_index, abs=1e-9)


def test_training_hides_the_outcome_of_some_targets(data, monkeypatch):
    model = _model(data, any_outcome_share=0.5)
    asked = []
    original = model.query

    def recording(h, outcome, surface, offset, head="shared"):
        asked.append(outcome.clone())
        return original(h, outcome, surface, offset, head)

    monkeypatch.setattr(model, "query", recording)
    split = leave_one_out(data.histories)
    pretrain(model, data, split.train_ends, split.valid, TrainConfig(max_epochs=1, progress=False, threads=1))
    outcomes = torch.cat(asked)
    hidden = (outcomes == model.config.any_outcome).float().mean().item()
    assert 0.4 < hidden < 0.6


def test_an_unconditioned_model_is_scored_with_one_query_per_offset(data):
    """Its queries do not depend on the outcome: asking for a mix of two must score exactly as asking for
    one (no duplicated queries halving its unique share)."""
    model = _model(data, variant="pinrec-unconditioned").eval()
    index = item_index(model)
    test = future_window(data.histories, 3 * 86_400_000).test
    settings = FutureEvalSettings(budget=20)
    mixed = future_window_metrics(model, index, data.histories, test, [1, 2], [0.5, 0.5], 0, settings)
    single = future_window_metrics(model, index, data.histories, test, [1], [1.0], 0, settings)
    assert mixed == single


def test_mean_over_seeds_keeps_the_keys_and_adds_standard_deviations():
    runs = [
        [{"model": "sasrec", "hr@10": 0.1, "epochs": 3}, {"model": "pinrec", "hr@10": 0.2, "epochs": 5}],
        [{"model": "sasrec", "hr@10": 0.3, "epochs": 5}, {"model": "pinrec", "hr@10": 0.2, "epochs": 7}],
    ]
    merged = mean_over_seeds(runs, "model")
    assert [row["model"] for row in merged] == ["sasrec", "pinrec"]
    assert merged[0]["hr@10"] == pytest.approx(0.2) and merged[0]["hr@10_std"] == pytest.approx(0.1)
    assert merged[1]["hr@10_std"] == 0.0 and merged[1]["epochs"] == 6.0 and merged[1]["seeds"] == 2
    assert merged[0]["runs"] == [runs[0][0], runs[1][0]]


def test_a_sasrec_model_has_no_head_to_finetune(data):
    model = _model(data, variant="sasrec")
    users = np.arange(len(data.histories.user_ids))
    with pytest.raises(ValueError, match="no head to finetune"):
        finetune_surface(model, data, 0, users, TrainConfig(max_epochs=1, progress=False))
