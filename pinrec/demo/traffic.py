"""The demo's traffic: users' activity replayed through Kafka, one user's live actions and the freshness of
their recommendations, and every surface queried under two outcome budgets."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pinrec.bench.load import LoadResult, one_at_a_time, protocol_senders, round_robin
from pinrec.demo.config import BUDGETS, DemoConfig
from pinrec.demo.metrics import consumed_events
from pinrec.demo.model import DemoModel
from pinrec.serving.client import rest_v1
from pinrec.serving.engine import pairwise_distance
from pinrec.stream.security import KafkaEndpoint

if TYPE_CHECKING:
    import pandas as pd

    from pinrec.model.data.sequences import Histories
    from pinrec.server_process import ServerProcess
    from pinrec.stream.events import Event


@dataclass(frozen=True)
class StreamFacts:
    events: int
    seconds: float  # from the first send to the consumer having written everything

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class LiveFacts:
    user_id: int
    new_topic: int
    before: list[int]
    after: list[int]
    freshness_ms: float  # events sent -> first changed answer
    new_topic_share_before: float
    new_topic_share_after: float


@dataclass(frozen=True)
class MixFacts:
    surface: str
    budget: str  # a name in BUDGETS
    context: dict[str, int]
    outcome_share: dict[str, float]  # share of the returned items per producing outcome
    archetype_share: dict[str, float]  # share of the returned items made for each outcome (ground truth)
    topics: int  # distinct topics among the returned items
    pairwise_distance: float
    latency_ms: float


def sample_users(histories: Histories, count: int) -> np.ndarray:
    """Rows of the users with the most history (they make the clearest story), up to count."""
    lengths = np.diff(histories.offsets)
    return np.argsort(-lengths, kind="stable")[:count]


def _events(frame: pd.DataFrame, shift_ms: int) -> list[Event]:
    from pinrec.stream.events import Event

    columns = ["event_id", "user_id", "item_id", "action", "surface", "ts_ms", "query_id", "subject_item_id"]
    rows = frame[columns].astype(object).where(frame[columns].notna(), None).to_dict("records")
    return [Event(**(row | {"ts_ms": int(row["ts_ms"]) + shift_ms})) for row in rows]


def stream_histories(
    kafka: KafkaEndpoint, topic: str, model: DemoModel, config: DemoConfig, consumer_metrics: str
) -> StreamFacts:
    """The streamed users' whole activity (impressions included), times shifted so that it ends now, sent
    through Kafka; done when the consumer has written all of it to Feast."""
    from pinrec.stream.producer import produce

    data = model.data
    users = data.histories.user_ids[sample_users(data.histories, config.streamed_users)]
    frame = data.log.events[data.log.events["user_id"].isin(users)]
    shift = int(time.time() * 1000) - 60_000 - int(frame["ts_ms"].max())
    events = _events(frame, shift)
    before = consumed_events(consumer_metrics)
    started = time.monotonic()
    produce(
        kafka.bootstrap,
        topic,
        events,
        stamp_now=False,
        total=len(events),
        progress=False,
        security=kafka.security,
    )
    deadline = time.monotonic() + 300
    while consumed_events(consumer_metrics) - before < len(events):
        if time.monotonic() > deadline:
            raise TimeoutError("the consumer did not write the streamed events within 5 minutes")
        time.sleep(0.2)
    return StreamFacts(len(events), time.monotonic() - started)


def _home(server: ServerProcess, user_id: int, k: int = 20) -> list[int]:
    instance = {"user_id": user_id, "k": k, "budget": BUDGETS["saves"]}
    response = rest_v1(server.http, "home", [instance])
    response.raise_for_status()
    return [item["item_id"] for item in response.json()["predictions"][0]["items"]]


def live_freshness(
    kafka: KafkaEndpoint, topic: str, server: ServerProcess, model: DemoModel, config: DemoConfig
) -> LiveFacts:
    """The most active streamed user saves a few popular items of a topic they never engaged with; the demo
    polls their home feed until it changes."""
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
    produce(kafka.bootstrap, topic, events, stamp_now=True, progress=False, security=kafka.security)
    deadline = sent + 60
    after = before
    while after == before and time.monotonic() < deadline:
        time.sleep(0.02)
        after = _home(server, user_id)
    if after == before:
        raise TimeoutError("the user's recommendations did not change within 60 s of their new actions")
    freshness = (time.monotonic() - sent) * 1000
    return LiveFacts(user_id, new_topic, before, after, freshness, topic_share(before), topic_share(after))


def surface_mixes(server: ServerProcess, model: DemoModel, user_id: int) -> tuple[list[MixFacts], LoadResult]:
    """Each surface with its context under each budget (REST v1), then a burst of mixed REST v1 / v2 / gRPC
    traffic for the latency figures."""
    from pinrec.model.data.simulate import action_roles

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


def traffic_burst(
    server: ServerProcess, user_id: int, contexts: dict[str, dict[str, int]], count: int = 150
) -> LoadResult:
    """count requests one at a time, in turn over gRPC, REST v1 and REST v2 (to the surfaces in turn)."""
    surfaces = list(contexts)

    def request(i: int) -> tuple[str, dict]:
        surface = surfaces[i % len(surfaces)]
        return surface, {
            "user_id": user_id,
            "k": 20,
            "budget": BUDGETS["saves"],
            "context": contexts[surface],
        }

    senders = protocol_senders(server, request)
    return one_at_a_time(round_robin([senders["grpc"], senders["rest_v1"], senders["rest"]]), count)
