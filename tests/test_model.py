"""The model's building blocks on small hand-made or simulated data: shapes, causality, the KV cache,
the loss, the metrics, determinism, artifacts."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pinrec.featurestore.schema import Vocabulary
from pinrec.model import future_eval
from pinrec.model.artifacts import data_fingerprint, load_artifact, save_artifact
from pinrec.model.config import DAY_MS
from pinrec.model.data.contexts import NO_QUERY, context_vectors, search_query_items
from pinrec.model.data.prepare import prepare
from pinrec.model.data.sequences import (
    Examples,
    future_window,
    leave_one_out,
    recent_histories,
    training_batches,
)
from pinrec.model.data.simulate import SimulationConfig, simulate
from pinrec.model.evaluate import item_index, leave_one_out_metrics, next_queries
from pinrec.model.finetune import (
    SurfaceSessions,
    _FrozenBackbone,
    _TrainedBackbone,
    allowed_offsets,
    draw_offsets,
    finetune_surface,
    surface_sessions,
)
from pinrec.model.future_eval import FutureEvalSettings, surface_session_metrics, surface_session_requests
from pinrec.model.generate import PlannedQuery, generate_queries, merge_similar, plan_queries, retrieve
from pinrec.model.index import IndexSettings, build_index
from pinrec.model.loss import item_log_frequency, sampled_softmax_loss
from pinrec.model.pretrain import base_config, new_model, pretrain, training_counts
from pinrec.model.train import TrainConfig, fit


@pytest.fixture(scope="module")
def data():
    return prepare(
        simulate(SimulationConfig.small(users=120, items=400, days=7), progress=False), Vocabulary()
    )


def _model(data, variant="pinrec", seed=0, **overrides):
    config = base_config(data, dim=32, layers=2, heads=2, max_len=20, dropout=0.0, **overrides)
    return new_model(config.with_variant(variant), data, seed=seed)


def _inputs(data, users=4, length=12):
    rows = np.arange(users)
    ends = np.minimum(data.histories.offsets[rows] + length, data.histories.offsets[rows + 1])
    return recent_histories(data.histories, rows, ends, 20)


def test_shapes_of_hidden_states_and_queries(data):
    model = _model(data)
    inputs = _inputs(data)
    hidden, cache = model.encode(**inputs.to_dict())
    B, T = inputs.items.shape
    assert hidden.shape == (B, T, 32)
    assert len(cache) == 2 and cache[0][0].shape == (B, 2, T, 16)
    queries = generate_queries(model, inputs, 0, [1, 2], steps=3, now_ms=inputs.times[:, -1] + 1)
    assert queries.shape == (B, 3, 2, len(model.config.offsets), 32)
    assert torch.allclose(queries.norm(dim=-1), torch.ones(()), atol=1e-5)


def test_hashed_item_tables_give_unit_item_vectors(data):
    model = _model(data, hash_tables=4, hash_buckets=64)
    vectors = model.items.all_items()
    assert vectors.shape == (data.catalog.size, 32)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(()), atol=1e-5)
    assert sum(p.numel() for p in model.items.tables.parameters()) == 4 * 64 * 8  # k tables of width dim/k


def test_changing_later_tokens_never_changes_earlier_outputs(data):
    model = _model(data)
    inputs = _inputs(data, users=3, length=15)
    before, _ = model.encode(**inputs.to_dict())
    changed = inputs.to_dict()
    changed["items"] = changed["items"].clone()
    changed["items"][:, -3:] = torch.randint(1, data.catalog.size + 1, (3, 3))
    changed["actions"] = changed["actions"].clone()
    changed["actions"][:, -3:] = 2
    after, _ = model.encode(**changed)
    assert torch.allclose(before[:, :-3], after[:, :-3], atol=1e-5)
    assert not torch.allclose(before[:, -1], after[:, -1], atol=1e-4)


def test_kv_cache_decoding_equals_full_recomputation(data):
    model = _model(data)
    inputs = _inputs(data, users=5, length=17)
    now = inputs.times[:, -1] + 1000
    cached = generate_queries(model, inputs, 1, [2, 1], steps=4, now_ms=now, use_cache=True)
    full = generate_queries(model, inputs, 1, [2, 1], steps=4, now_ms=now, use_cache=False)
    assert torch.allclose(cached, full, atol=1e-5)


def test_log_q_correction_on_a_hand_made_case():
    # Two items, one query that scores both equally: with logQ the rarer item (sampled less) wins.
    counts = torch.tensor([0, 99, 0])  # item 1 is popular, item 2 never seen
    log_frequency = item_log_frequency(counts)
    assert torch.allclose(log_frequency.exp().sum(), torch.tensor(1.0))
    assert log_frequency[1] > log_frequency[2]
    vectors = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    query = torch.tensor([[1.0, 0.0]])
    loss_popular = sampled_softmax_loss(query, torch.tensor([1]), lambda i: vectors[i], log_frequency, 0, 1.0)
    # Only the positive is a candidate: the loss is exactly zero whatever the correction.
    assert loss_popular.item() == pytest.approx(0.0, abs=1e-6)
    both = torch.tensor([1, 2])
    losses = [
        sampled_softmax_loss(query.repeat(2, 1), both, lambda i: vectors[i], log_frequency, 0, 1.0)
        for _ in range(1)
    ]
    # Equal raw scores; the correction subtracts log Q, larger for the popular item, so item 2 is favoured
    # for both queries: the mean loss is log(1 + e^d) / 2 + log(1 + e^-d) / 2 for d = the log Q difference.
    n = 2
    chance = 1 - (1 - log_frequency[both].exp()) ** n
    d = float(torch.log(chance[0]) - torch.log(chance[1]))
    expected = (math.log1p(math.exp(d)) + math.log1p(math.exp(-d))) / 2
    assert losses[0].item() == pytest.approx(expected, rel=1e-4)


def test_random_draws_of_the_positive_are_not_negatives():
    # A one-item catalog: every uniform draw is the positive itself, so nothing competes with it.
    vectors = torch.eye(2)
    log_frequency = item_log_frequency(torch.tensor([0, 5]))
    generator = torch.Generator().manual_seed(0)
    query = torch.tensor([[0.0, 1.0]])
    loss = sampled_softmax_loss(
        query, torch.tensor([1]), lambda i: vectors[i], log_frequency, 16, 1.0, generator
    )
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_hit_rate_and_ndcg_on_a_hand_made_ranking():
    # Items 1..4 on the unit circle; each user's query points at a known item.
    angles = np.array([0.0, 0.5, 1.0, 1.5])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    index = build_index(vectors, IndexSettings(kind="exact"))

    class H:  # a Histories stand-in with two users: histories [1] and [2], targets 2 and 4
        offsets = np.array([0, 2, 4])
        items = np.array([1, 2, 2, 4])

    examples = Examples(np.array([0, 1]), np.array([1, 3]), np.array([0, 1, 2]), np.array([1, 3]))
    queries = vectors[[1, 0]]  # user 0 asks for item 2 (rank 1); user 1 for item 1 -> item 4 ranks 3rd
    metrics = leave_one_out_metrics(index, queries, H, examples)
    # User 1's candidates after masking item 2: 1, 3, 4 -> target at rank index 2.
    assert metrics["hr@10"] == 1.0
    assert metrics["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(4)) / 2)


def test_merging_near_duplicate_queries_of_one_outcome_adds_budgets():
    a = np.array([1.0, 0.0], dtype=np.float32)
    b = np.array([0.995, 0.0998], dtype=np.float32)  # cosine ~0.995
    c = np.array([0.0, 1.0], dtype=np.float32)
    merged = merge_similar(
        [PlannedQuery(a, 10, 1, 0), PlannedQuery(b, 5, 1, 1), PlannedQuery(c, 5, 1, 1)], 0.9
    )
    assert [q.budget for q in merged] == [15, 5]
    assert merged[0].outcome == 1 and merged[0].step == 0
    # The same near-duplicate asked for another outcome keeps its own budget: the outcome split holds.
    apart = merge_similar([PlannedQuery(a, 10, 1, 0), PlannedQuery(b, 5, 2, 1)], 0.9)
    assert [(q.outcome, q.budget) for q in apart] == [(1, 10), (2, 5)]


def test_budget_split_follows_outcome_shares_and_excludes_seen_items(data):
    model = _model(data)
    index = item_index(model)
    inputs = _inputs(data, users=1)
    queries = generate_queries(model, inputs, 0, [1, 2], steps=2, now_ms=inputs.times[:, -1] + 1)[0].numpy()
    planned = plan_queries(queries, [1, 2], [0.75, 0.25], 40, merge_threshold=1.01)  # no merging
    assert sum(q.budget for q in planned) == pytest.approx(40)
    assert sum(q.budget for q in planned if q.outcome == 1) == pytest.approx(30)
    seen = inputs.items[0][inputs.items[0] > 0].numpy()
    result = retrieve(index, planned, 40, seen, overfetch=2.0)
    assert len(result.items) <= 40 and len(set(result.items.tolist())) == len(result.items)
    assert not np.isin(result.items, seen).any()
    assert 0 < result.unique_share <= 1


def test_duplicate_queries_fill_their_budget_from_the_overfetch(data):
    model = _model(data)
    index = item_index(model)
    vector = model.items.all_items()[3].detach().numpy()
    planned = [PlannedQuery(vector, 10, 1, 0), PlannedQuery(vector.copy(), 10, 2, 1)]
    result = retrieve(index, planned, 20, np.zeros(0, dtype=np.int64), overfetch=2.0)
    assert len(result.items) == 20 == len(set(result.items.tolist()))  # not 10: the second query goes deeper
    assert result.unique_share == pytest.approx(0.5)  # the queries' own top-10 lists are the same
    assert sorted(result.outcomes.tolist()) == [1] * 10 + [2] * 10


def test_many_identical_queries_still_fill_the_whole_list_with_its_exact_split(data):
    """Six queries with one vector (an untrained head asks the same for every outcome): the over-fetch of
    each runs out, so retrieval searches deeper rather than return fewer items or another split."""
    model = _model(data)
    index = item_index(model)
    vector = model.items.all_items()[3].detach().numpy()
    planned = [
        PlannedQuery(vector, budget, outcome, 0) for budget, outcome in [(4, 1)] * 3 + [(8 / 3, 2)] * 3
    ]
    seen = np.array([5, 6, 7], dtype=np.int64)
    result = retrieve(index, planned, 20, seen, overfetch=1.0)
    assert (
        len(result.items) == 20 == len(set(result.items.tolist())) and not np.isin(result.items, seen).any()
    )
    assert sorted(result.outcomes.tolist()) == [1] * 12 + [2] * 8


def test_multi_token_targets_fall_inside_their_windows(data):
    rng = np.random.default_rng(0)
    offsets = (0, DAY_MS)
    batch = next(iter(training_batches(data.histories, data.histories.offsets[1:], offsets, 20, 8, rng)))
    valid = batch.inputs.items > 0
    assert (batch.targets[..., 0][valid] > 0).float().mean() > 0.5  # most positions have a next item
    assert (batch.targets[~valid] == 0).all()  # padding predicts nothing


def test_training_is_deterministic_under_a_seed(data):
    split = leave_one_out(data.histories)
    results = []
    for _ in range(2):
        model = _model(data, seed=3)
        pretrain(
            model, data, split.train_ends, split.valid, TrainConfig(max_epochs=1, seed=3, progress=False)
        )
        results.append(next_queries(model, data.histories, split.test, 1, 0))
    assert np.array_equal(results[0], results[1])


def test_future_window_split_holds_users_out(data):
    split = future_window(data.histories, 2 * DAY_MS, holdout_share=0.2, seed=0)
    held = np.concatenate([split.valid.rows, split.test.rows])
    starts = data.histories.offsets[:-1]
    assert (split.train_ends[held] == starts[held]).all()  # never trained on
    for i in range(len(split.test)):
        targets = split.test.targets[split.test.target_offsets[i] : split.test.target_offsets[i + 1]]
        assert (targets >= split.test.ends[i]).all()  # targets come after the cut


def test_artifact_round_trip(data, tmp_path):
    model = _model(data)
    model.add_head("search")
    path = save_artifact(
        tmp_path / "v1", model, data.catalog.item_ids, data.vocabulary, data_fingerprint(data.log.events)
    )
    loaded = load_artifact(path)
    assert loaded.heads == ["shared", "search"]
    assert loaded.manifest["index"]["kind"] == "exact"
    inputs = _inputs(data)
    now = inputs.times[:, -1] + 1
    for head in ("shared", "search"):
        expected = generate_queries(model, inputs, 1, [1], 2, now, head)
        assert torch.allclose(
            generate_queries(loaded.model, inputs, 1, [1], 2, now, head), expected, atol=1e-6
        )
    assert np.array_equal(loaded.item_ids, data.catalog.item_ids)
    with pytest.raises(FileExistsError):
        save_artifact(path, model, data.catalog.item_ids, data.vocabulary, "x")


def test_items_unseen_in_training_are_their_content_alone_and_the_artifact_keeps_it(data, tmp_path):
    model = _model(data)
    split = leave_one_out(data.histories)
    counts = np.bincount(data.histories.items[: data.histories.offsets[5]], minlength=data.catalog.size + 1)
    model.items.set_evidence(counts)  # as pretraining does, from the training ranges: here 5 users' items
    torch.nn.init.normal_(model.items.content_bag.weight)  # as if trained
    unseen = torch.from_numpy(np.flatnonzero(counts[1:] == 0) + 1)
    seen = torch.from_numpy(np.flatnonzero(counts[1:] > 0) + 1)
    with torch.no_grad():
        table = model.items.table()
        content = F.normalize(model.items._content(unseen), dim=-1)
        with_ids = F.normalize(model.items.id_embedding(seen) + model.items._content(seen), dim=-1)
    assert len(unseen) and len(seen)
    assert torch.allclose(table[unseen], content, atol=1e-6)
    assert torch.allclose(table[seen], with_ids, atol=1e-6)
    path = save_artifact(
        tmp_path / "v1", model, data.catalog.item_ids, data.vocabulary, data_fingerprint(data.log.events)
    )
    assert torch.allclose(load_artifact(path).model.items.table(), table, atol=1e-6)
    pretrain(model, data, split.train_ends, split.valid, TrainConfig(max_epochs=1, progress=False, threads=1))
    trained = training_counts(data.histories, split.train_ends, data.catalog.size)
    assert torch.equal(model.items.id_evidence, torch.from_numpy(trained > 0))


@pytest.mark.parametrize("frozen", [True, False])
def test_finetuning_adds_a_surface_head_and_freezes_the_backbone_by_default(data, frozen):
    model = _model(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    users = np.arange(len(data.histories.user_ids))
    config = TrainConfig(max_epochs=6, warmup_steps=1, progress=False, threads=1)
    result = finetune_surface(model, data, 1, users, config, freeze_backbone=frozen)
    assert "search" in model.heads and 0 <= result.best_metric <= 1
    after = model.state_dict()
    # The new head starts as a copy of the shared one; the trained weights are kept only when they beat it.
    trained = result.best_epoch > 0
    assert torch.equal(before["heads.shared.mlp.1.weight"], after["heads.search.mlp.1.weight"]) != trained
    backbone_moved = not torch.equal(before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])
    assert backbone_moved == (trained and not frozen)
    assert torch.equal(before["heads.shared.mlp.1.weight"], after["heads.shared.mlp.1.weight"])  # untouched


def test_artifact_keeps_its_approximate_index_and_search_parameters(data, tmp_path):
    model = _model(data)
    fingerprint = data_fingerprint(data.log.events)
    settings = IndexSettings(kind="pq-refine", target_recall=0.99)
    path = save_artifact(
        tmp_path / "v1", model, data.catalog.item_ids, data.vocabulary, fingerprint, index_settings=settings
    )
    loaded = load_artifact(path)
    kept = loaded.manifest["index"]
    assert kept["kind"] == loaded.index.kind == "pq-refine" and kept["recall_at_100"] >= 0.99
    assert loaded.index.params == kept["params"] == kept["measured"][-1]["params"]
    assert loaded.index.index.k_factor == kept["params"]["k_factor_rf"]
    assert kept["recall_measured_on"] == "perturbed item vectors" and kept["timed_on"]


def test_training_keeps_the_starting_weights_when_no_epoch_beats_them():
    layer = torch.nn.Linear(2, 1)
    start = layer.weight.detach().clone()
    scores = iter([0.5, 0.4, 0.3])  # the start, then two worse epochs

    result = fit(
        layer,
        layer.parameters(),
        lambda epoch: [torch.ones(4, 2)],
        lambda batch: layer(batch).pow(2).mean(),
        lambda: next(scores),
        TrainConfig(max_epochs=2, progress=False, threads=1, validate_start=True),
    )
    assert result.best_epoch == 0 and result.best_metric == 0.5 and result.epochs == 2
    assert torch.equal(layer.weight, start)


def test_finetuning_offsets_follow_the_pretraining_windows():
    hour = 3_600_000
    sessions = SurfaceSessions(
        *(np.zeros(3, dtype=np.int64) for _ in range(4)),
        np.zeros((3, 1), dtype=np.int64),
        np.zeros(3, dtype=np.int64),
        gaps_ms=np.array([hour // 6, 2 * hour, 240 * hour]),
        first=np.array([True, False, False]),
        starts_ms=np.zeros(3, dtype=np.int64),
        subjects=np.zeros(3, dtype=np.int64),
        query_ids=np.full(3, NO_QUERY),
    )
    allowed = allowed_offsets(sessions, (0, hour, 24 * hour, 168 * hour))
    assert allowed.tolist() == [
        [True, True, True, True],  # the first engagement, 10 minutes after the history
        [False, False, True, True],  # two hours later: the day and week windows
        [True, False, False, False],  # ten days later: in no window, trained as "next"
    ]
    drawn = draw_offsets(allowed, np.random.default_rng(0)).numpy()
    assert allowed[np.arange(3), drawn].all()


def _item_table(model) -> torch.Tensor:
    with torch.no_grad():
        return model.items.table()  # (V + 1, C)


def test_context_vectors_are_the_subject_item_or_the_mean_of_the_query_items(data):
    table = F.normalize(
        torch.randn(data.catalog.size + 1, 8, generator=torch.Generator().manual_seed(0)), dim=1
    )
    query_items = search_query_items(data.log, data.catalog, data.vocabulary)
    query = int(query_items.query_ids[0])
    vectors, present = context_vectors(
        table, np.array([5, 0, 0, 0]), np.array([NO_QUERY, query, NO_QUERY, 10**9]), query_items
    )
    assert present.tolist() == [True, True, False, False]  # an unknown query gives no context
    assert torch.equal(vectors[0], table[5])
    assert torch.allclose(vectors[1], F.normalize(table[query_items.items_of(query)].mean(dim=0), dim=0))


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("surface", [1, 2])  # search (a query), related (a subject item)
def test_a_surface_head_is_finetuned_on_the_hidden_state_the_server_decodes_from(data, frozen, surface):
    model = _model(data)
    query_items = search_query_items(data.log, data.catalog, data.vocabulary)
    sessions = surface_sessions(data, surface, np.arange(len(data.histories.user_ids)))
    # One engagement per outcome (the context token's action), the first one stripped of its context.
    rows = np.array([np.flatnonzero(sessions.outcomes == o)[0] for o in np.unique(sessions.outcomes)])
    sessions = replace(sessions, subjects=sessions.subjects.copy(), query_ids=sessions.query_ids.copy())
    sessions.subjects[rows[0]], sessions.query_ids[rows[0]] = 0, NO_QUERY
    backbone = (_FrozenBackbone if frozen else _TrainedBackbone)(model, data, sessions, surface, query_items)
    contexts, present = context_vectors(
        _item_table(model), sessions.subjects[rows], sessions.query_ids[rows], query_items
    )
    assert present.tolist() == [False] + [True] * (len(rows) - 1)
    with torch.no_grad():
        hidden = backbone.hidden_of(torch.from_numpy(rows))  # (N, C)
    K = len(model.config.offsets)
    for n, row in enumerate(rows):
        outcome = int(sessions.outcomes[row])
        inputs = recent_histories(
            data.histories, sessions.rows[[row]], sessions.ends[[row]], model.config.max_len
        )
        now = torch.from_numpy(sessions.starts_ms[[row]])
        context = contexts[[n]] if present[n] else None
        served = generate_queries(model, inputs, surface, [outcome], 1, now, context=context)[
            0, 0, 0
        ]  # (K, C)
        trained = model.query(
            hidden[n].expand(K, -1), torch.full((K,), outcome), torch.full((K,), surface), torch.arange(K)
        )
        assert torch.allclose(trained, served, atol=1e-5)
        if context is not None:  # the context token changes the queries
            plain = generate_queries(model, inputs, surface, [outcome], 1, now)[0, 0, 0]
            assert not torch.allclose(trained, plain, atol=1e-3)


def test_surface_sessions_are_judged_with_their_context_on_their_engaged_items(data, monkeypatch):
    model = _model(data)
    histories, events = data.histories, data.log.events
    split = future_window(histories, 2 * DAY_MS, holdout_share=0.5, seed=0)
    requests = surface_session_requests(model, data, split.test, split.window_ms, 1)
    # A query counts as context where other (training) users' engagements define it: not every one here.
    assert len(requests) >= 5 and requests.present.any()
    cut = dict(zip(split.test.rows, histories.times[split.test.ends - 1], strict=True))
    for i, (row, now) in enumerate(zip(requests.rows, requests.now_ms, strict=True)):
        assert cut[row] < now <= cut[row] + split.window_ms  # a session starting in the user's window
        assert histories.times[requests.ends[i] - 1] < now  # on the positives before it
        assert requests.ends[i] == histories.offsets[row + 1] or histories.times[requests.ends[i]] >= now
        mine = events[(events["user_id"] == histories.user_ids[row]) & (events["surface"] == "search")]
        session = mine[mine["session_id"] == mine.loc[mine["ts_ms"] == now, "session_id"].iloc[0]]
        engaged = session.loc[session["action"] != "impression", "item_id"].to_numpy()
        assert set(requests.targets[i].tolist()) == set(data.catalog.index_of(engaged).tolist())

    # Queries forced onto one unseen target of each session: a list of one item finds exactly that one.
    table = _item_table(model)
    aimed = {}
    for now, targets, seen in zip(requests.now_ms, requests.targets, requests.seen, strict=True):
        aimed[int(now)] = int(np.setdiff1d(targets, seen)[0])
    assert len(aimed) == len(requests)  # session starts tell the requests apart
    received = []

    def aimed_queries(model, history, surface, outcomes, steps, now_ms, head, context=None):
        received.append(context)
        vectors = table[[aimed[int(t)] for t in now_ms]]  # (B, C)
        return vectors[:, None, None, None].expand(-1, steps, len(outcomes), len(model.config.offsets), -1)

    monkeypatch.setattr(future_eval, "generate_queries", aimed_queries)
    metrics = surface_session_metrics(
        model,
        item_index(model),
        data,
        split.test,
        split.window_ms,
        1,
        [1],
        [1.0],
        FutureEvalSettings(budget=1),
    )
    expected = np.mean([1 / len(targets) for targets in requests.targets])
    assert metrics == {"recall@1_budgeted": pytest.approx(expected), "cases": len(requests)}
    given = torch.cat([c for c in received if c is not None])  # requests without a context get None
    expected_contexts = requests.contexts[torch.from_numpy(requests.present)]
    assert len(given) == len(expected_contexts)
    assert all((expected_contexts == row).all(dim=1).any() for row in given)
