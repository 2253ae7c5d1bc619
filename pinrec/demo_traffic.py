"""The demo's traffic: users' activity replayed through Kafka, one user's live actions and the freshness of
their recommendations, and every surface queried under two outcome budgets."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import requests
import torch

from pinrec.demo_report import scrape, total
from pinrec.serving.client import grpc_outputs, grpc_request, grpc_stub, rest_v1, rest_v2
from pinrec.serving.engine import pairwise_distance

BUDGETS = {"saves": {"save": 0.8, "click": 0.2}, "clicks": {"click": 0.8, "save": 0.2}}


@dataclass
class StreamFacts:
    events: int
    seconds: float  # from the first send to the consumer having written everything

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


@dataclass
class LiveFacts:
    user_id: int
    new_topic: int
    before: list[int]
    after: list[int]
    freshness_ms: float  # events sent -> first changed answer
    new_topic_share_before: float
    new_topic_share_after: float


@dataclass
class MixFacts:
    surface: str
    budget: str
    context: dict
    outcome_share: dict[str, float]  # share of the returned items per producing outcome
    archetype_share: dict[str, float]  # share of the returned items made for each outcome (ground truth)
    topics: int  # distinct topics among the returned items
    pairwise_distance: float
    latency_ms: float


@dataclass
class TrafficFacts:
    latencies_ms: list[float] = field(default_factory=list)
    requests_per_s: float = 0.0
    errors: int = 0


def _events(frame, shift_ms: int) -> list:
    from pinrec.stream.events import Event

    columns = ["event_id", "user_id", "item_id", "action", "surface", "ts_ms", "query_id", "subject_item_id"]
    rows = frame[columns].astype(object).where(frame[columns].notna(), None).to_dict("records")
    return [Event(**(row | {"ts_ms": int(row["ts_ms"]) + shift_ms})) for row in rows]


def _consumed(consumer_metrics: str) -> float:
    return total(scrape(consumer_metrics).get("pinrec_consumer_events_consumed_total", []))


def stream_histories(bootstrap: str, topic: str, model, config, consumer_metrics: str) -> StreamFacts:
    """The streamed users' whole activity (impressions included), times shifted so that it ends now, sent
    through Kafka; done when the consumer has written all of it to Feast."""
    from pinrec.demo import sample_users
    from pinrec.stream.producer import produce

    data = model.data
    users = data.histories.user_ids[sample_users(data.histories, config.streamed_users)]
    frame = data.log.events[data.log.events["user_id"].isin(users)]
    shift = int(time.time() * 1000) - 60_000 - int(frame["ts_ms"].max())
    events = _events(frame, shift)
    before = _consumed(consumer_metrics)
    started = time.monotonic()
    produce(bootstrap, topic, events, stamp_now=False, total=len(events), progress=False)
    deadline = time.monotonic() + 300
    while _consumed(consumer_metrics) - before < len(events):
        if time.monotonic() > deadline:
            raise TimeoutError("the consumer did not write the streamed events within 5 minutes")
        time.sleep(0.2)
    return StreamFacts(len(events), time.monotonic() - started)


def _home(server, user_id: int, k: int = 20) -> list[int]:
    instance = {"user_id": user_id, "k": k, "budget": BUDGETS["saves"]}
    response = rest_v1(server.http, "home", [instance])
    response.raise_for_status()
    return [item["item_id"] for item in response.json()["predictions"][0]["items"]]


def live_freshness(bootstrap: str, topic: str, server, model, config) -> LiveFacts:
    """The most active streamed user saves a few popular items of a topic they never engaged with; the demo
    polls their home feed until it changes."""
    from pinrec.demo import sample_users
    from pinrec.stream.events import Event
    from pinrec.stream.producer import produce

    data, world = model.data, model.world
    row = int(sample_users(data.histories, 1)[0])
    user_id = int(data.histories.user_ids[row])
    engaged = data.catalog.item_ids[
        data.histories.items[data.histories.offsets[row] : data.histories.offsets[row + 1]] - 1
    ]
    topic_of = world.item_topic
    seen_topics = set(topic_of[engaged - 1].tolist())
    popularity = np.bincount(topic_of, minlength=int(topic_of.max()) + 1)
    new_topic = int(next(t for t in np.argsort(-popularity) if t not in seen_topics))
    candidates = data.catalog.item_ids[np.argsort(-data.catalog.counts[1:])]
    new_items = [int(i) for i in candidates if topic_of[i - 1] == new_topic][: config.live_events]

    def topic_share(items: list[int]) -> float:
        return float(np.mean([topic_of[i - 1] == new_topic for i in items])) if items else 0.0

    before = _home(server, user_id)
    now = int(time.time() * 1000)
    events = [
        Event(f"demo-live-{now}-{n}", user_id, item, "save", "home", now + n)
        for n, item in enumerate(new_items)
    ]
    sent = time.monotonic()
    produce(bootstrap, topic, events, stamp_now=True, progress=False)
    deadline = sent + 60
    after = before
    while after == before and time.monotonic() < deadline:
        time.sleep(0.02)
        after = _home(server, user_id)
    if after == before:
        raise TimeoutError("the user's recommendations did not change within 60 s of their new actions")
    freshness = (time.monotonic() - sent) * 1000
    return LiveFacts(user_id, new_topic, before, after, freshness, topic_share(before), topic_share(after))


def surface_mixes(server, model, user_id: int) -> tuple[list[MixFacts], TrafficFacts]:
    """Each surface with its context under each budget (REST v1), then a burst of mixed REST v1 / v2 / gRPC
    traffic for the latency figures."""
    from pinrec.model.simulate import action_roles

    data, world = model.data, model.world
    outcomes = action_roles(data.vocabulary).outcomes
    vectors = np.load(model.artifact / "item_embeddings.npy")
    events = data.log.events
    mine = events[events["user_id"] == user_id]
    queries = mine["query_id"].dropna()
    query_id = int(queries.iloc[-1]) if len(queries) else int(events["query_id"].dropna().iloc[0])
    subject = int(mine["item_id"].iloc[-1])
    contexts = {"home": {}, "search": {"query_id": query_id}, "related": {"subject_item_id": subject}}
    mixes = []
    for surface, context in contexts.items():
        for name, budget in BUDGETS.items():
            instance = {"user_id": user_id, "k": 50, "budget": budget, "context": context}
            started = time.perf_counter()
            response = rest_v1(server.http, surface, [instance])
            latency = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            answer = response.json()["predictions"][0]["items"]
            items = np.array([item["item_id"] for item in answer])
            labels = [item["outcome"] for item in answer]
            distance = pairwise_distance(torch.from_numpy(vectors[data.catalog.index_of(items) - 1]))
            mixes.append(
                MixFacts(
                    surface,
                    name,
                    context,
                    {o: labels.count(o) / len(labels) for o in sorted(set(labels))},
                    {o: float(np.mean(world.item_archetype[items - 1] == k)) for k, o in enumerate(outcomes)},
                    len(set(world.item_topic[items - 1].tolist())),
                    distance,
                    latency,
                )
            )
    return mixes, traffic_burst(server, user_id, contexts)


def traffic_burst(server, user_id: int, contexts: dict, count: int = 150) -> TrafficFacts:
    stub = grpc_stub(server.grpc)
    session = requests.Session()
    facts = TrafficFacts()
    started = time.perf_counter()
    surfaces = list(contexts)
    for i in range(count):
        surface = surfaces[i % 3]
        instance = {"user_id": user_id, "k": 20, "budget": BUDGETS["saves"], "context": contexts[surface]}
        sent = time.perf_counter()
        try:
            if i % 3 == 0:
                grpc_outputs(stub.ModelInfer(grpc_request(surface, instance), timeout=10))
            elif i % 3 == 1:
                rest_v1(server.http, surface, [instance], session=session).raise_for_status()
            else:
                rest_v2(server.http, surface, instance, session=session).raise_for_status()
        except Exception:  # counted and reported, the demo goes on
            facts.errors += 1
            continue
        facts.latencies_ms.append((time.perf_counter() - sent) * 1000)
    facts.requests_per_s = count / (time.perf_counter() - started)
    return facts
