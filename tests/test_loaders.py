"""Dataset loaders on small slices of the real public datasets (copied into tmp_path, never into the repo)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pinrec.featurestore.schema import Vocabulary
from pinrec.model.data.eventlog import EventLog
from pinrec.model.data.loaders import (
    SYNTHETIC_STEP_MS,
    dataset_name,
    load_dataset,
    load_movielens_csv,
    load_movielens_udata,
    load_s3rec,
)

S3REC_LINES = 50
UDATA_ROWS = 2000
RATINGS_ROWS = 3000
TAGS_ROWS = 400


@pytest.fixture(scope="module")
def data_dir() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    path = Path(os.environ.get("PINREC_DATA_DIR", default))
    if not path.is_dir():
        pytest.skip(f"real datasets not found at {path}; set PINREC_DATA_DIR to the shared data folder")
    return path


def source(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        pytest.skip(f"{path} is missing from the data folder")
    return path


def head_lines(path: Path, count: int) -> list[str]:
    with path.open(encoding="utf-8") as lines:
        return [next(lines) for _ in range(count)]


@pytest.fixture
def beauty(data_dir: Path, tmp_path: Path) -> Path:
    """The first users of Beauty.txt, with the attributes file beside it under its usual name."""
    target = tmp_path / "Beauty.txt"
    target.write_text("".join(head_lines(source(data_dir, "amazon-beauty/Beauty.txt"), S3REC_LINES)))
    shutil.copy(source(data_dir, "amazon-beauty/Beauty_item2attributes.json"), tmp_path)
    return target


@pytest.fixture
def ml100k(data_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    rows = head_lines(source(data_dir, "ml-100k/u.data"), UDATA_ROWS)
    (folder / "u.data").write_text("".join(rows))
    shutil.copy(source(data_dir, "ml-100k/ml-100k.item"), folder)
    return folder / "u.data"


@pytest.fixture
def ml_latest(data_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    ratings = source(data_dir, "ml-latest-small/ratings.csv")
    (folder / "ratings.csv").write_text("".join(head_lines(ratings, RATINGS_ROWS + 1)))
    tags = source(data_dir, "ml-latest-small/tags.csv")
    (folder / "tags.csv").write_text("".join(head_lines(tags, TAGS_ROWS + 1)))
    shutil.copy(source(data_dir, "ml-latest-small/movies.csv"), folder)
    return folder / "ratings.csv"


def feature_names_of(events: EventLog, item_id: int) -> set[str]:
    row = events.item_features[int(np.flatnonzero(events.item_ids == item_id)[0])]
    return {events.info["item_features"][column] for column in np.flatnonzero(row)}


def test_s3rec_gives_one_click_on_home_per_interaction(beauty: Path):
    events = load_s3rec(beauty)
    interactions = sum(len(line.split()) - 1 for line in beauty.read_text().splitlines())
    assert len(events.events) == interactions
    assert events.num_users == S3REC_LINES
    assert set(events.events["action"]) == {"click"}
    assert set(events.events["surface"]) == {"home"}
    assert events.name == "beauty"
    assert events.info["source"] == "s3rec"
    assert events.info["outcomes"] == "single positive action"


def test_s3rec_keeps_each_users_order_with_strictly_increasing_times(beauty: Path):
    events = load_s3rec(beauty).events
    for line in beauty.read_text().splitlines():
        user, *items = (int(token) for token in line.split())
        mine = events[events["user_id"] == user]
        assert mine["item_id"].tolist() == items
        assert (np.diff(mine["ts_ms"].to_numpy()) == SYNTHETIC_STEP_MS).all()
        assert mine["event_id"].tolist() == [f"beauty-{user}-{position}" for position in range(len(items))]


def test_s3rec_event_ids_are_unique_and_deterministic(beauty: Path):
    first, second = load_s3rec(beauty).events, load_s3rec(beauty).events
    assert first["event_id"].is_unique
    pd.testing.assert_frame_equal(first, second)


def test_s3rec_attributes_are_multi_hot_over_every_attribute_id(beauty: Path):
    events = load_s3rec(beauty)
    attributes = json.loads((beauty.parent / "Beauty_item2attributes.json").read_text())
    all_attributes = {attribute for values in attributes.values() for attribute in values}
    interacted = {int(token) for line in beauty.read_text().splitlines() for token in line.split()[1:]}
    assert events.item_features.shape == (len(interacted), len(all_attributes))
    assert events.item_features.dtype == np.float32
    assert set(events.item_ids.tolist()) == interacted
    # Item 4 is in the first user's sequence and carries attributes [1, 2, 3] in the real file.
    assert feature_names_of(events, 4) == {f"attribute:{a}" for a in attributes["4"]}
    # Multi-hot, not counts: the real file repeats some ids (item 4090 lists attribute 17 twice).
    assert events.item_features.sum() == sum(len(set(attributes[str(item)])) for item in interacted)


def test_s3rec_reads_any_file_name_with_or_without_attributes(beauty: Path, tmp_path: Path):
    other = tmp_path / "sequences.dat"
    shutil.copy(beauty, other)
    plain = load_s3rec(other)
    assert plain.name == "sequences"
    assert plain.item_features is None and plain.item_ids is None
    explicit = load_s3rec(other, attributes_path=beauty.parent / "Beauty_item2attributes.json")
    np.testing.assert_array_equal(explicit.item_features, load_s3rec(beauty).item_features)


def test_s3rec_rejects_a_repeated_user_and_a_missing_attributes_file(beauty: Path, tmp_path: Path):
    twice = tmp_path / "twice.txt"
    twice.write_text("1 5 6\n1 7\n")
    with pytest.raises(ValueError, match="user 1 on 2 lines"):
        load_s3rec(twice)
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_s3rec(beauty, attributes_path=tmp_path / "nowhere.json")


def test_udata_maps_ratings_to_save_and_click(ml100k: Path):
    events = load_movielens_udata(ml100k)
    table = pd.read_csv(ml100k, sep="\t", header=None, names=["user_id", "item_id", "rating", "seconds"])
    assert len(events.events) == UDATA_ROWS
    merged = events.events.merge(table, on=["user_id", "item_id"], validate="one_to_one")
    assert ((merged["action"] == "save") == (merged["rating"] >= 4)).all()
    assert set(merged["action"]) == {"save", "click"}
    assert (merged["ts_ms"] == merged["seconds"] * 1000).all()
    assert set(events.events["surface"]) == {"home"}
    assert events.name == "ml-100k"
    assert "rating >= 4 -> save" in events.info["outcomes"]


def test_udata_orders_each_user_by_time_and_numbers_events(ml100k: Path):
    events = load_movielens_udata(ml100k).events
    for user, mine in events.groupby("user_id"):
        assert (np.diff(mine["ts_ms"].to_numpy()) >= 0).all()
        assert mine["event_id"].tolist() == [f"ml-100k-{user}-{position}" for position in range(len(mine))]


def test_udata_breaks_time_ties_by_row_order(tmp_path: Path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t30\t5\t200\n1\t20\t2\t100\n1\t10\t3\t200\n")
    events = load_movielens_udata(folder / "u.data").events
    assert events["item_id"].tolist() == [20, 30, 10]
    assert events["action"].tolist() == ["click", "save", "click"]


def test_udata_features_are_genres_and_release_decade(ml100k: Path):
    events = load_movielens_udata(ml100k)
    names = events.info["item_features"]
    assert events.item_features.shape == (len(np.unique(events.events["item_id"])), len(names))
    assert sum(name.startswith("genre:") for name in names) == 18  # ml-100k's genres, 'unknown' left out
    assert {name for name in names if name.startswith("decade:")} >= {"decade:1920s", "decade:1990s"}
    # Item 242 (the first row of u.data) is Kolya, 1996, Comedy.
    assert feature_names_of(events, 242) == {"genre:Comedy", "decade:1990s"}


def test_ratings_csv_adds_one_long_click_per_tag_group(ml_latest: Path):
    events = load_movielens_csv(ml_latest)
    ratings = pd.read_csv(ml_latest)
    tags = pd.read_csv(ml_latest.parent / "tags.csv")
    tag_groups = len(tags.drop_duplicates(["userId", "movieId", "timestamp"]))
    assert tag_groups < len(tags)  # the slice holds several tags written in one second
    counts = events.events["action"].value_counts()
    assert len(events.events) == RATINGS_ROWS + tag_groups
    assert counts["long_click"] == tag_groups
    assert counts["save"] == (ratings["rating"] >= 4).sum()
    assert counts["click"] == (ratings["rating"] < 4).sum()
    assert events.events["event_id"].is_unique
    assert events.name == "ml-latest-small"


def test_ratings_csv_genres_from_movies_csv(ml_latest: Path):
    events = load_movielens_csv(ml_latest)
    assert events.item_features.shape == (events.num_items, 20 - 1)  # 20 labels less '(no genres listed)'
    # Movie 1 (user 1's first rating) is Toy Story: Adventure|Animation|Children|Comedy|Fantasy.
    expected = {"Adventure", "Animation", "Children", "Comedy", "Fantasy"}
    assert feature_names_of(events, 1) == {f"genre:{genre}" for genre in expected}


def test_ratings_csv_without_companions_is_ratings_only(ml_latest: Path, tmp_path: Path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(ml_latest, alone)
    events = load_movielens_csv(alone / "ratings.csv")
    assert len(events.events) == RATINGS_ROWS
    assert events.item_features is None
    with_tags = load_movielens_csv(alone / "ratings.csv", tags_path=ml_latest.parent / "tags.csv")
    assert "long_click" in set(with_tags.events["action"])


def test_a_vocabulary_without_the_outcome_actions_is_refused(ml100k: Path, ml_latest: Path):
    with pytest.raises(ValueError, match="lacks save"):
        load_movielens_udata(ml100k, Vocabulary(actions=("impression", "click")))
    with pytest.raises(ValueError, match="lacks long_click"):
        load_movielens_csv(ml_latest, vocabulary=Vocabulary(actions=("click", "save")))


def test_load_dataset_dispatches_on_the_path(beauty: Path, ml100k: Path, ml_latest: Path, tmp_path: Path):
    assert load_dataset(beauty).info["source"] == "s3rec"
    assert load_dataset(ml100k).info["source"] == "movielens-100k"
    assert load_dataset(ml100k.parent).info["source"] == "movielens-100k"
    assert load_dataset(ml_latest).info["source"] == "movielens-csv"
    written = load_dataset(ml_latest.parent).write(tmp_path / "log")
    assert load_dataset(written).info["source"] == "movielens-csv"


def test_load_dataset_refuses_unknown_formats_and_missing_paths(ml_latest: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="S3-Rec sequence file"):
        load_dataset(ml_latest.parent / "movies.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds none of"):
        load_dataset(empty)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        load_dataset(tmp_path / "nothing-here")


def test_dataset_names(beauty: Path, ml100k: Path, ml_latest: Path):
    assert dataset_name(beauty) == "beauty"
    assert dataset_name(ml100k) == dataset_name(ml100k.parent) == "ml-100k"
    assert dataset_name(ml_latest) == "ml-latest-small"


@pytest.mark.parametrize("fixture", ["beauty", "ml100k", "ml_latest"])
def test_write_then_read_gives_back_the_same_log(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
):
    original = load_dataset(request.getfixturevalue(fixture))
    restored = EventLog.read(original.write(tmp_path / "log"))
    assert restored.name == original.name
    assert restored.info == original.info
    pd.testing.assert_frame_equal(restored.events, original.events)
    np.testing.assert_array_equal(restored.item_ids, original.item_ids)
    np.testing.assert_array_equal(restored.item_features, original.item_features)
