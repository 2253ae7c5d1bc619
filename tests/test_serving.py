"""The model server as users meet it: a real `pinrec serve` process (KServe REST v1/v2 and gRPC v2) reading
sequences from a real Feast store, checked against the in-process recommender."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests

from pinrec.featurestore.store import FeatureStoreSettings, SequenceStore, open_store
from pinrec.serving.batcher import Batcher
from pinrec.serving.client import grpc_outputs, grpc_request, grpc_stub, rest_v1, rest_v2, v2_outputs
from pinrec.serving.engine import LoadedModel, Recommender
from pinrec.serving.metrics import ServingMetrics
from pinrec.serving.predictor import SurfaceModel
from pinrec.serving.refusals import DeadlineExceeded
from pinrec.serving.request import parse_instance
from pinrec.serving.settings import ServeSettings
from tests.helpers import cli_env
from tests.serving_helpers import (
    Served,
    small_world,
    start_server,
    stop_server,
    store_sequences,
    train_artifacts,
)

SURFACES = ("home", "search", "related")
NOW = 1_800_000_000_000  # a fixed request time, so that answers are reproducible


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    data = small_world()
    versions = train_artifacts(data, root)
    link = root / "current"
    link.symlink_to(versions[0])
    features = FeatureStoreSettings(repo_dir=root / "repo")
    users = store_sequences(data, features)
    server = Served(data, link, versions, features, users, "", "")
    start_server(server, cli_env(root / "state"), root / "server.log")
    yield server
    stop_server(server)


def _instance(served, surface, **extra) -> dict:
    instance = {"user_id": served.users[0], "k": 20, "budget": {"save": 0.6, "click": 0.4}, "now_ms": NOW}
    if surface == "search":
        instance["context"] = {"query_id": int(served.data.log.events["query_id"].dropna().iloc[0])}
    if surface == "related":
        instance["context"] = {"subject_item_id": int(served.data.catalog.item_ids[5])}
    return {**instance, **extra}


@pytest.mark.parametrize("surface", SURFACES)
def test_every_protocol_answers_every_surface_alike(served, surface):
    instance = _instance(served, surface)
    v1 = rest_v1(served.http, surface, [instance])
    assert v1.status_code == 200, v1.text
    answer = v1.json()["predictions"][0]
    items = [item["item_id"] for item in answer["items"]]
    assert len(items) == 20 == len(set(items))
    outcomes = [item["outcome"] for item in answer["items"]]
    assert (outcomes.count("save"), outcomes.count("click")) == (12, 8)  # the budget's split, exactly
    assert (
        answer["model_version"] == "v1"
        and not answer["cold_start"]
        and answer["context_used"] == (surface != "home")
    )
    v2 = rest_v2(served.http, surface, instance)
    assert v2.status_code == 200, v2.text
    outputs = v2_outputs(v2.json())
    assert outputs["item_id"] == items and outputs["model_version"] == ["v1"]
    response = grpc_stub(served.grpc).ModelInfer(grpc_request(surface, instance), timeout=10)
    assert grpc_outputs(response)["item_id"] == items


def test_answers_equal_the_in_process_recommender(served):
    model = LoadedModel.load(served.versions[0])
    recommender = Recommender(
        ServeSettings(served.artifacts), model, SequenceStore(open_store(served.features))
    )
    for surface in SURFACES:
        instance = _instance(served, surface, steps=4)
        request = parse_instance(instance, surface, recommender.limits(model), NOW)
        expected = recommender.recommend(model, request, surface, recommender.read_histories([request])[0])
        answer = rest_v1(served.http, surface, [instance]).json()["predictions"][0]
        assert [item["item_id"] for item in answer["items"]] == expected.item_ids.tolist()
        assert [item["outcome"] for item in answer["items"]] == expected.outcomes
        assert np.allclose([item["score"] for item in answer["items"]], expected.scores, atol=1e-5)


def _mixed_requests(served, recommender, model, surface) -> list:
    """Requests of one surface that batch in different groups and pad differently: stored and explicit
    histories of several lengths, a cold user, one and two outcomes, 2 and 4 steps."""
    items = served.data.catalog.item_ids
    instances = [
        _instance(served, surface, user_id=served.users[1], steps=4),
        _instance(served, surface, user_id=served.users[2], steps=4),
        _instance(served, surface, user_id=served.users[3], steps=2, budget={"save": 1.0}),
        _instance(served, surface, user_id=987_654_321),  # no history: context or popularity
        _instance(served, surface, history={"items": [int(items[3]), int(items[9])]}, steps=4),
        _instance(served, surface, user_id=served.users[4], steps=4, k=7),
    ]
    requests = [parse_instance(i, surface, recommender.limits(model), NOW) for i in instances]
    return requests, recommender.read_histories(requests)


@pytest.mark.parametrize("surface", SURFACES)
def test_requests_answered_together_get_the_answers_they_get_alone(served, surface):
    model = LoadedModel.load(served.versions[0])
    recommender = Recommender(
        ServeSettings(served.artifacts), model, SequenceStore(open_store(served.features))
    )
    requests, histories = _mixed_requests(served, recommender, model, surface)
    together = recommender.recommend_many(model, requests, surface, histories)
    for request, history, answer in zip(requests, histories, together, strict=True):
        alone = recommender.recommend(model, request, surface, history)
        assert answer.item_ids.tolist() == alone.item_ids.tolist()
        assert answer.outcomes == alone.outcomes and answer.cold_start == alone.cold_start
        assert np.allclose(answer.scores, alone.scores, atol=1e-5)


def test_the_batcher_answers_concurrent_requests_and_drops_late_ones(served):
    model = LoadedModel.load(served.versions[0])
    recommender = Recommender(
        ServeSettings(served.artifacts), model, SequenceStore(open_store(served.features))
    )
    requests, histories = _mixed_requests(served, recommender, model, "home")
    metrics = ServingMetrics()
    batcher = Batcher(recommender, metrics, workers=2, max_batch=4)
    try:
        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(6) as pool:
            futures = list(pool.map(lambda r: batcher.submit(model, r, "home", deadline), requests * 3))
        answers = [future.result(timeout=60) for future in futures]
        late = batcher.submit(model, requests[0], "home", time.monotonic() - 1)
        with pytest.raises(DeadlineExceeded):
            late.result(timeout=60)
    finally:
        batcher.stop()
    for request, history, answer in zip(requests * 3, histories * 3, answers, strict=True):
        assert (
            answer.item_ids.tolist()
            == recommender.recommend(model, request, "home", history).item_ids.tolist()
        )
    ok = {"surface": "home", "status": "ok"}
    assert metrics.registry.get_sample_value("pinrec_requests_total", ok) == len(answers)


def test_a_swap_during_a_request_leaves_the_request_on_its_model(served):
    old, new = (LoadedModel.load(path) for path in served.versions[:2])
    sequences = SequenceStore(open_store(served.features))
    recommender = Recommender(ServeSettings(served.artifacts), old, sequences)
    metrics = ServingMetrics()
    body = {"instances": [_instance(served, "home", steps=4)]}

    async def call(predictor: SurfaceModel, swap_midway: bool) -> dict:
        parsed = await predictor.preprocess(body)
        if swap_midway:
            recommender.swap(new)  # as the artifact watcher does, between parsing and inference
        return (await predictor.postprocess(await predictor.predict(parsed)))["predictions"][0]

    batcher = Batcher(recommender, metrics, workers=1, max_batch=4)
    predictor = SurfaceModel("home", recommender, batcher)
    during, after = asyncio.run(call(predictor, True)), asyncio.run(call(predictor, False))
    batcher.stop()
    assert (during["model_version"], after["model_version"]) == ("v1", "v2")
    request = parse_instance(body["instances"][0], "home", recommender.limits(old), NOW)
    expected = recommender.recommend(old, request, "home", recommender.read_histories([request])[0])
    assert [item["item_id"] for item in during["items"]] == expected.item_ids.tolist()
    ok = {"surface": "home", "status": "ok"}
    assert metrics.registry.get_sample_value("pinrec_requests_total", ok) == 2


def test_cold_start_users_get_a_flagged_answer(served):
    unknown = {"user_id": 987_654_321, "k": 10, "now_ms": NOW}
    answer = rest_v1(served.http, "home", [unknown]).json()["predictions"][0]
    assert answer["cold_start"] and len(answer["items"]) == 10
    assert {item["outcome"] for item in answer["items"]} == {"popular"}
    with_subject = _instance(served, "related", user_id=987_654_321)
    answer = rest_v1(served.http, "related", [with_subject]).json()["predictions"][0]
    assert answer["cold_start"] and answer["context_used"]
    assert {item["outcome"] for item in answer["items"]} <= {"save", "click"}
    subject = with_subject["context"]["subject_item_id"]
    assert subject not in [item["item_id"] for item in answer["items"]]


def test_an_explicit_history_replaces_the_stored_one(served):
    items = [int(i) for i in served.data.catalog.item_ids[10:20]]
    instance = {"history": {"items": items, "actions": ["click"] * 10}, "k": 15, "now_ms": NOW}
    answer = rest_v1(served.http, "home", [instance]).json()["predictions"][0]
    returned = [item["item_id"] for item in answer["items"]]
    assert len(returned) == 15 and not set(returned) & set(items)  # seen items are never recommended


MALFORMED_V1 = [
    ({}, "instances"),
    ({"instances": []}, "instances"),
    ({"instances": {"user_id": 1}}, "instances"),
    ({"instances": [1]}, "instance"),
    ({"instances": [{}]}, "user_id"),
    ({"instances": [{"user_id": "42"}]}, "user_id"),
    ({"instances": [{"user_id": 4.5}]}, "user_id"),
    ({"instances": [{"user_id": True}]}, "user_id"),
    ({"instances": [{"user_id": -1}]}, "user_id"),
    ({"instances": [{"user_id": 2**70}]}, "user_id"),
    ({"instances": [{"user_id": 1, "k": 0}]}, "k"),
    ({"instances": [{"user_id": 1, "k": 100_000}]}, "k"),
    ({"instances": [{"user_id": 1, "k": "ten"}]}, "k"),
    ({"instances": [{"user_id": 1, "steps": 0}]}, "steps"),
    ({"instances": [{"user_id": 1, "steps": 99}]}, "steps"),
    ({"instances": [{"user_id": 1, "budget": {"save": 0.5, "click": 0.4}}]}, "sum to 1"),
    ({"instances": [{"user_id": 1, "budget": {"like": 1.0}}]}, "outcome"),
    ({"instances": [{"user_id": 1, "budget": {"save": -0.5, "click": 1.5}}]}, "budget.save"),
    ({"instances": [{"user_id": 1, "budget": {"save": "all"}}]}, "budget.save"),
    ({"instances": [{"user_id": 1, "budget": {}}]}, "budget"),
    ({"instances": [{"user_id": 1, "budget": [0.5, 0.5]}]}, "budget"),
    ({"instances": [{"user_id": 1, "budjet": {"save": 1.0}}]}, "budjet"),
    ({"instances": [{"user_id": 1, "context": {"query": 3}}]}, "context"),
    ({"instances": [{"user_id": 1, "context": {"query_id": "shoes"}}]}, "context.query_id"),
    ({"instances": [{"user_id": 1, "context": []}]}, "context"),
    ({"instances": [{"history": {"items": list(range(1, 2000))}}]}, "history.items"),
    ({"instances": [{"history": {"actions": ["click"]}}]}, "history.items"),
    ({"instances": [{"history": {"items": [1, 2], "actions": ["click"]}}]}, "history.actions"),
    ({"instances": [{"history": {"items": [1], "actions": ["purchase"]}}]}, "history.actions"),
    ({"instances": [{"history": {"items": [1, 2], "times_ms": [5, 3]}}]}, "history.times_ms"),
    ({"instances": [{"history": {"items": ["a"]}}]}, "history.items"),
    ({"instances": [{"history": [1, 2, 3]}]}, "history"),
    ({"instances": [{"user_id": 1, "now_ms": -5}]}, "now_ms"),
    ({"instances": [{"user_id": 1}] * 100}, "instances"),
]


@pytest.mark.parametrize(("body", "field"), MALFORMED_V1, ids=[f for _, f in MALFORMED_V1])
def test_malformed_v1_requests_get_400_naming_the_field(served, body, field):
    response = requests.post(f"{served.http}/v1/models/home:predict", json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]


MALFORMED_V2 = [
    ([{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["x"]}], "user_id"),
    ([{"name": "user_id", "datatype": "INT64", "shape": [2], "data": [1, 2]}], "user_id"),
    ([{"name": "user_id", "datatype": "INT64", "shape": [3], "data": [1]}], "user_id"),
    ([{"name": "colour", "datatype": "INT64", "shape": [1], "data": [1]}], "colour"),
    (
        [
            {"name": "user_id", "datatype": "INT64", "shape": [1], "data": [1]},
            {"name": "outcomes", "datatype": "BYTES", "shape": [1], "data": ["save"]},
        ],
        "shares",
    ),
    (
        [
            {"name": "user_id", "datatype": "INT64", "shape": [1], "data": [1]},
            {"name": "outcomes", "datatype": "BYTES", "shape": [2], "data": ["save", "click"]},
            {"name": "shares", "datatype": "FP32", "shape": [1], "data": [1.0]},
        ],
        "shares",
    ),
    (
        [
            {"name": "user_id", "datatype": "INT64", "shape": [1], "data": [1]},
            {"name": "outcomes", "datatype": "BYTES", "shape": [1], "data": ["save"]},
            {"name": "shares", "datatype": "FP32", "shape": [1], "data": ["NaN"]},
        ],
        "shares",
    ),
    ([{"name": "k", "datatype": "INT64", "shape": [1], "data": [5]}], "user_id"),
]


@pytest.mark.parametrize(("inputs", "field"), MALFORMED_V2, ids=[f for _, f in MALFORMED_V2])
def test_malformed_v2_requests_get_400_naming_the_field(served, inputs, field):
    response = requests.post(f"{served.http}/v2/models/search/infer", json={"inputs": inputs}, timeout=10)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]


def test_unknown_surfaces_and_broken_bodies_get_4xx(served):
    assert rest_v1(served.http, "checkout", [{"user_id": 1}]).status_code == 404
    broken = requests.post(
        f"{served.http}/v1/models/home:predict", data=b"{not json", timeout=10,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert 400 <= broken.status_code < 500


@pytest.mark.parametrize(
    ("instance", "field"),
    [
        ({"user_id": 1, "budget": {"save": 0.2}}, "sum to 1"),
        ({"user_id": 1, "k": 0}, "k"),
        ({"user_id": 1, "budget": {"dance": 1.0}}, "outcome"),
        ({"k": 3}, "user_id"),
    ],
)
def test_malformed_grpc_requests_get_invalid_argument(served, instance, field):
    with pytest.raises(grpc.RpcError) as refused:
        grpc_stub(served.grpc).ModelInfer(grpc_request("home", instance), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in refused.value.details()


def _load(served, seconds: float, errors: list, versions: set) -> int:
    """Mixed traffic on every surface and protocol from 6 threads; returns how many requests were made."""
    stop = time.monotonic() + seconds
    stub = grpc_stub(served.grpc)

    def client(n: int) -> int:
        count = 0
        while time.monotonic() < stop:
            surface = SURFACES[(n + count) % 3]
            instance = _instance(served, surface, user_id=served.users[(n + count) % len(served.users)])
            try:
                if count % 3 == 0:
                    answer = grpc_outputs(stub.ModelInfer(grpc_request(surface, instance), timeout=10))
                    versions.add(answer["model_version"][0])
                else:
                    if count % 3 == 1:
                        response = rest_v1(served.http, surface, [instance])
                    else:
                        response = rest_v2(served.http, surface, instance)
                    if response.status_code != 200:
                        errors.append(response.text)
                    else:
                        body = response.json()
                        versions.add(
                            body["predictions"][0]["model_version"] if "predictions" in body
                            else v2_outputs(body)["model_version"][0]
                        )  # fmt: skip
            except Exception as error:  # any failure is recorded, not raised in the thread
                errors.append(repr(error))
            count += 1
        return count

    with ThreadPoolExecutor(6) as pool:
        return sum(pool.map(client, range(6)))


def test_concurrent_load_has_no_errors_and_moves_the_metrics(served):
    before = requests.get(f"{served.http}/metrics", timeout=10).text
    errors, versions = [], set()
    made = _load(served, 5, errors, versions)
    assert made >= 30 and errors == []
    text = requests.get(f"{served.http}/metrics", timeout=10).text
    for stage in ("features", "prefill", "decode", "search", "total"):
        assert f'pinrec_request_stage_seconds_count{{stage="{stage}",surface="home"}}' in text
    for name in (
        "pinrec_response_unique_share_count",
        "pinrec_response_pairwise_cosine_distance_count",
        "pinrec_feature_staleness_seconds_count",
        "pinrec_candidates_returned_count",
        'pinrec_model_info{version="v1"}',
        "request_predict_seconds",  # KServe's own histograms stay on
    ):
        assert name in text, name
    assert _counter(text, 'pinrec_requests_total{status="ok",surface="search"}') > _counter(
        before, 'pinrec_requests_total{status="ok",surface="search"}'
    )


def _counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.split()[-1])
    return 0.0


def test_swapping_the_artifact_under_load_fails_no_request(served):
    errors, versions = [], set()
    worker = threading.Thread(target=_load, args=(served, 8, errors, versions))
    worker.start()
    time.sleep(2)
    new_link = served.artifacts.with_name("current.new")
    new_link.symlink_to(served.versions[1])
    os.replace(new_link, served.artifacts)  # atomic re-point, as `ln -sfn` does
    worker.join()
    assert errors == []
    assert versions == {"v1", "v2"}
    after = rest_v1(served.http, "home", [_instance(served, "home")]).json()["predictions"][0]
    assert after["model_version"] == "v2"
