"""The synthetic world: the event-log contract, determinism, and the behaviours the benchmarks rely on."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pinrec.featurestore.schema import EVENT_LOG_SCHEMA, Vocabulary
from pinrec.model.data.eventlog import EventLog
from pinrec.model.data.simulate import DAY_MS, SimulationConfig, action_roles, build_world, simulate

CONFIG = SimulationConfig.small()
TINY = SimulationConfig.small(users=60, items=600, topics=8, days=7)


@pytest.fixture(scope="module")
def log() -> EventLog:
    return simulate(CONFIG, progress=False)


def engagements(events: pd.DataFrame) -> pd.DataFrame:
    return events[events["action"] != "impression"]


def impressions(events: pd.DataFrame) -> pd.DataFrame:
    return events[events["action"] == "impression"]


def test_small_config_gives_about_fifty_thousand_events(log: EventLog) -> None:
    assert 30_000 <= len(log.events) <= 80_000
    assert log.info["events"] == len(log.events)


def test_frame_has_the_event_log_schema_and_survives_a_parquet_round_trip(log: EventLog, tmp_path) -> None:
    events = log.events
    assert list(events.columns) == EVENT_LOG_SCHEMA.names
    assert events["event_id"].is_unique
    for column in ("user_id", "item_id", "ts_ms"):
        assert events[column].dtype == np.int64
    for column in ("query_id", "subject_item_id", "session_id"):
        assert str(events[column].dtype) == "Int64"
    assert events["session_id"].notna().all()
    assert events["user_id"].between(1, CONFIG.users).all()
    assert events["item_id"].between(1, CONFIG.items).all()
    assert set(events["action"]) == set(Vocabulary().actions)
    assert set(events["surface"]) == set(Vocabulary().surfaces)
    assert log.item_features.dtype == np.float32
    assert log.item_features.shape == (CONFIG.items, CONFIG.content_dim)
    np.testing.assert_array_equal(log.item_ids, np.arange(1, CONFIG.items + 1))
    back = EventLog.read(log.write(tmp_path))
    pd.testing.assert_frame_equal(back.events, log.events, check_dtype=False)
    assert back.info == json.loads(json.dumps(log.info))


def test_same_seed_gives_the_same_log_and_another_seed_a_different_one() -> None:
    first, again = simulate(TINY, progress=False), simulate(TINY, progress=False)
    pd.testing.assert_frame_equal(first.events, again.events)
    np.testing.assert_array_equal(first.item_features, again.item_features)
    other = simulate(SimulationConfig.small(users=60, items=600, topics=8, days=7, seed=1), progress=False)
    assert not first.events[["item_id", "ts_ms"]].equals(other.events[["item_id", "ts_ms"]])


def test_config_survives_the_info_json_round_trip(log: EventLog) -> None:
    assert SimulationConfig.from_dict(json.loads(json.dumps(log.info["config"]))) == CONFIG


def test_times_lie_in_the_window_and_sessions_of_a_user_do_not_overlap(log: EventLog) -> None:
    events = log.events
    assert events["ts_ms"].between(CONFIG.end_ms - CONFIG.days * DAY_MS, CONFIG.end_ms).all()
    assert (events.groupby("user_id")["ts_ms"].diff().dropna() > 0).all()
    spans = events.groupby("session_id").agg(
        user=("user_id", "first"), first=("ts_ms", "min"), last=("ts_ms", "max")
    )
    spans = spans.sort_values(["user", "first"])
    same_user = spans["user"].to_numpy()[1:] == spans["user"].to_numpy()[:-1]
    starts_after = spans["first"].to_numpy()[1:] > spans["last"].to_numpy()[:-1]
    assert (starts_after | ~same_user).all()


def test_every_engagement_follows_an_impression_of_its_item_in_its_session(log: EventLog) -> None:
    shown = impressions(log.events)[["session_id", "item_id", "ts_ms"]]
    engaged = engagements(log.events)[["session_id", "item_id", "ts_ms"]]
    paired = engaged.merge(shown, on=["session_id", "item_id"], how="left", suffixes=("", "_shown"))
    assert len(paired) == len(engaged)  # an item is shown once per session
    assert paired["ts_ms_shown"].notna().all()
    assert (paired["ts_ms"] > paired["ts_ms_shown"]).all()
    assert not shown.duplicated(["session_id", "item_id"]).any()


def test_search_events_carry_a_query_and_related_events_a_subject(log: EventLog) -> None:
    events = log.events
    search, related = events["surface"] == "search", events["surface"] == "related"
    assert events.loc[search, "query_id"].notna().all()
    assert events.loc[~search, "query_id"].isna().all()
    assert events.loc[related, "subject_item_id"].notna().all()
    assert events.loc[~related, "subject_item_id"].isna().all()
    assert (events.groupby("session_id")["surface"].nunique() == 1).all()
    assert (events[search].groupby("session_id")["query_id"].nunique() == 1).all()
    # Search results belong to the query's topic: query_id = topic * variants + variant.
    world = build_world(CONFIG)
    query_topic = events.loc[search, "query_id"].to_numpy(dtype=np.int64) // CONFIG.query_variants
    item_topic = world.item_topic[events.loc[search, "item_id"].to_numpy() - 1]
    assert (query_topic == item_topic).all()


def test_engagement_rates_differ_by_surface(log: EventLog) -> None:
    events = log.events
    rate = (
        engagements(events).groupby("surface").size() / impressions(events).groupby("surface").size()
    ).sort_values()
    assert rate.diff().dropna().min() > 0.02, rate
    assert rate.to_dict() == pytest.approx(log.info["engagement_rate"], abs=0.01)


def test_engaged_items_match_the_users_interests_better_than_ignored_ones(log: EventLog) -> None:
    events = log.events
    world = build_world(CONFIG)
    engaged_keys = engagements(events).set_index(["session_id", "item_id"]).index
    shown = impressions(events)
    was_engaged = shown.set_index(["session_id", "item_id"]).index.isin(engaged_keys)
    weight = world.interest_weight(shown["user_id"].to_numpy(), shown["item_id"].to_numpy(), shown["ts_ms"])
    assert weight[was_engaged].mean() > weight[~was_engaged].mean() + 0.05
    assert log.info["interest_weight"]["engaged"] > log.info["interest_weight"]["not_engaged"]


def test_outcome_mix_differs_by_surface(log: EventLog) -> None:
    mix = pd.crosstab(
        engagements(log.events)["surface"], engagements(log.events)["action"], normalize="index"
    )
    for a, b in (("home", "search"), ("home", "related"), ("search", "related")):
        assert (mix.loc[a] - mix.loc[b]).abs().sum() / 2 > 0.05, mix


def test_outcome_depends_on_the_item_so_saved_items_differ_from_clicked_ones(log: EventLog) -> None:
    engaged = engagements(log.events)
    world = build_world(CONFIG)
    outcomes = list(action_roles(Vocabulary()).outcomes)
    archetype = world.item_archetype[engaged["item_id"].to_numpy() - 1]
    outcome = engaged["action"].map(outcomes.index).to_numpy()
    assert (archetype == outcome).mean() > 0.5  # chance would be about 0.3
    saved = set(engaged.loc[engaged["action"] == "save", "item_id"])
    clicked = set(engaged.loc[engaged["action"] == "click", "item_id"])
    assert len(saved & clicked) < 0.5 * min(len(saved), len(clicked))


def test_a_session_keeps_to_one_interest_while_days_spread_over_several(log: EventLog) -> None:
    engaged = engagements(log.events)
    topic = build_world(CONFIG).item_topic[engaged["item_id"].to_numpy() - 1]
    same_user = engaged["user_id"].to_numpy()[1:] == engaged["user_id"].to_numpy()[:-1]
    same_session = engaged["session_id"].to_numpy()[1:] == engaged["session_id"].to_numpy()[:-1]
    same_topic = topic[1:] == topic[:-1]
    assert same_topic[same_session].mean() > same_topic[same_user & ~same_session].mean() + 0.2
    topics_per_user = pd.Series(topic).groupby(engaged["user_id"].to_numpy()).nunique()
    assert topics_per_user.mean() > 2


def test_a_custom_vocabulary_names_the_events() -> None:
    vocabulary = Vocabulary(actions=("view", "tap", "pin"), surfaces=("feed", "find", "similar", "board"))
    events = simulate(TINY, vocabulary, progress=False).events
    assert set(events["action"]) == {"view", "tap", "pin"}
    assert set(events["surface"]) == {"feed", "find", "similar"}  # surfaces past the third are not simulated
    assert events.loc[events["surface"] == "find", "query_id"].notna().all()


@pytest.mark.parametrize(
    "vocabulary",
    [
        Vocabulary(actions=("impression", "click"), surfaces=("home", "search", "related")),
        Vocabulary(actions=("impression", "click", "save"), surfaces=("home", "search")),
    ],
    ids=["one-engagement-action", "two-surfaces"],
)
def test_a_too_small_vocabulary_is_refused(vocabulary: Vocabulary) -> None:
    with pytest.raises(ValueError, match="at least"):
        simulate(TINY, vocabulary, progress=False)


def test_an_impossible_config_is_refused() -> None:
    with pytest.raises(ValueError, match="topic"):
        SimulationConfig(items=3, topics=5)
