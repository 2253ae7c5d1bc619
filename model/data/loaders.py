"""Loaders that turn the public research datasets into EventLogs (see ../shared/data/README.md).

None of these datasets has impressions or several surfaces, so every event lands on the vocabulary's first
surface ("home"). Outcomes are derived as follows, and each EventLog's `info["outcomes"]` repeats the rule:

- S3-Rec sequence files (Beauty.txt, Yelp.txt, LastFM.txt): order only, no action types, no timestamps.
  Every interaction is the vocabulary's first engagement action ("click"); timestamps are synthetic, one
  day apart per user from 2020-01-01 UTC, so that the order is strict and time-based splits still work.
- MovieLens ratings (u.data, ratings.csv): rating >= 4 is the strong outcome "save", a lower rating the
  weak outcome "click". 4 of 5 stars is the usual "liked" threshold in implicit-feedback work on
  MovieLens and splits both files roughly in half (55% / 48% strong), so both outcomes get enough data.
- ml-latest-small tags (tags.csv): one "long_click" per (user, movie, timestamp) group, since one sitting
  may write several tags and each sitting is one act of deliberate engagement beyond a rating.

Content features are float32 rows, one per item id that occurs in the events, with zero rows for items
the metadata does not describe; `info["item_features"]` names the columns.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from pinrec.featurestore.event_log import is_event_log
from pinrec.featurestore.schema import Vocabulary
from pinrec.model.data.eventlog import EVENTS_FILE, EventLog

log = logging.getLogger(__name__)

# Vocabulary is a frozen dataclass, so one shared default is safe (and keeps ruff's B008 quiet).
DEFAULT_VOCABULARY = Vocabulary()

SYNTHETIC_EPOCH_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z
SYNTHETIC_STEP_MS = 86_400_000  # one day between a user's consecutive S3-Rec interactions
STRONG_RATING = 4.0
STRONG_ACTION, WEAK_ACTION, TAG_ACTION = "save", "click", "long_click"

UDATA_FILE, ML100K_ITEMS_FILE = "u.data", "ml-100k.item"
RATINGS_FILE, TAGS_FILE, MOVIES_FILE = "ratings.csv", "tags.csv", "movies.csv"
ATTRIBUTES_SUFFIX = "_item2attributes.json"
# Placeholder genre labels: an item carrying one has no known genre, so it gets no genre bit.
NO_GENRE = frozenset({"unknown", "(no genres listed)"})

ACCEPTED_FORMATS = (
    "a folder holding events.parquet (an EventLog, e.g. from `pinrec simulate`), "
    "an event-log folder of `pinrec sink` (date=YYYY-MM-DD/*.parquet; also a URI of any filesystem pyarrow "
    "knows: s3://, gs://, hdfs://, file://), "
    "a MovieLens 100K u.data file or its folder, a MovieLens ratings.csv file or its folder, "
    "or an S3-Rec sequence file (one line per user: `user_id item_id item_id ...`, integers only)"
)


def dataset_name(path: Path) -> str:
    """The short name benchmarks report: the folder name for folders and MovieLens files (whose file names
    are the same in every release), the lower-case file stem otherwise ("beauty", "yelp")."""
    path = Path(path).resolve()
    if path.is_dir():
        return path.name.lower()
    if path.name in (UDATA_FILE, RATINGS_FILE, EVENTS_FILE):
        return path.parent.name.lower()
    return path.stem.lower()


def load_dataset(path: Path | str, vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> EventLog:
    """Load any supported dataset, choosing the loader from the path (see ACCEPTED_FORMATS). A URI
    (scheme://...) is the sink's event log on that filesystem (object storage)."""
    if isinstance(path, str) and "://" in path:
        try:
            return EventLog.read_sink(path, path.rstrip("/").rsplit("/", 1)[-1])
        except OSError as error:  # pyarrow's filesystems: missing, unreachable, refused
            raise ValueError(
                f"cannot read the event log at {path}: {error}. Check the URI, and that filesystem's "
                "credentials in the environment (S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, "
                "AWS_ENDPOINT_URL for other S3 stores; GCS: GOOGLE_APPLICATION_CREDENTIALS)"
            ) from error
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path {path} does not exist; pass {ACCEPTED_FORMATS}")
    if path.is_dir():
        return _load_folder(path, vocabulary)
    if path.name == EVENTS_FILE:
        return EventLog.read(path.parent)
    if path.name == UDATA_FILE:
        return load_movielens_udata(path, vocabulary)
    if path.name == RATINGS_FILE:
        return load_movielens_csv(path, vocabulary=vocabulary)
    _check_s3rec_first_line(path)
    return load_s3rec(path, vocabulary=vocabulary)


def load_s3rec(
    path: Path, attributes_path: Path | None = None, vocabulary: Vocabulary = DEFAULT_VOCABULARY
) -> EventLog:
    """An S3-Rec sequence file: one line per user, `user_id item_id item_id ...`, oldest first.
    Item attributes come from `attributes_path`, else from `<stem>_item2attributes.json` beside the file."""
    path = Path(path)
    action, surface = _engagement_action(vocabulary), _only_surface(vocabulary)
    users, counts, items = _read_sequences(path)
    positions = _positions(counts)
    name = dataset_name(path)
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(users, counts),
            "item_id": items,
            "action": action,
            "surface": surface,
            "ts_ms": SYNTHETIC_EPOCH_MS + positions * SYNTHETIC_STEP_MS,
        }
    )
    frame["event_id"] = _event_ids(name, frame["user_id"], positions)
    attributes_path = _beside(path, path.stem + ATTRIBUTES_SUFFIX, attributes_path)
    item_ids = np.unique(items)
    features, feature_names = (
        _attribute_features(attributes_path, item_ids) if attributes_path else (None, [])
    )
    info = {
        "source": "s3rec",
        "path": str(path),
        "attributes_path": str(attributes_path) if attributes_path else None,
        "outcomes": "single positive action",
        "action": action,
        "surface": surface,
        "timestamps": "synthetic: one day apart per user from 2020-01-01 UTC, in file order",
        "item_features": feature_names,
    }
    return _event_log(name, frame, item_ids, features, info)


def load_movielens_udata(path: Path, vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> EventLog:
    """MovieLens 100K u.data (`user item rating unix_seconds`, tab-separated, no header); genres and
    release decade from ml-100k.item beside it, when present."""
    path = Path(path)
    _require_actions(vocabulary, (STRONG_ACTION, WEAK_ACTION))
    table = _read_udata(path)
    frame = _rating_events(table)
    name = dataset_name(path)
    frame = _sequence(name, frame, _only_surface(vocabulary))
    items_path = _beside(path, ML100K_ITEMS_FILE, None)
    item_ids = np.unique(frame["item_id"].to_numpy())
    features, feature_names = _ml100k_features(items_path, item_ids) if items_path else (None, [])
    info = {
        "source": "movielens-100k",
        "path": str(path),
        "item_metadata_path": str(items_path) if items_path else None,
        "outcomes": _rating_rule(),
        "strong_rating": STRONG_RATING,
        "surface": _only_surface(vocabulary),
        "item_features": feature_names,
    }
    return _event_log(name, frame, item_ids, features, info)


def load_movielens_csv(
    ratings_path: Path,
    tags_path: Path | None = None,
    movies_path: Path | None = None,
    vocabulary: Vocabulary = DEFAULT_VOCABULARY,
) -> EventLog:
    """MovieLens CSV releases such as ml-latest-small: ratings.csv, plus tags.csv (third outcome) and
    movies.csv (genres) from the given paths or beside ratings.csv."""
    ratings_path = Path(ratings_path)
    tags_path = _beside(ratings_path, TAGS_FILE, tags_path)
    movies_path = _beside(ratings_path, MOVIES_FILE, movies_path)
    _require_actions(vocabulary, (STRONG_ACTION, WEAK_ACTION) + ((TAG_ACTION,) if tags_path else ()))
    ratings = _read_csv(ratings_path, ("userId", "movieId", "rating", "timestamp"))
    parts = [_rating_events(_movielens_columns(ratings))]
    if tags_path:
        parts.append(_tag_events(_read_csv(tags_path, ("userId", "movieId", "tag", "timestamp"))))
    name = dataset_name(ratings_path)
    # Ratings come first so that a tag written in the same second as its rating follows the rating.
    frame = _sequence(name, pd.concat(parts, ignore_index=True), _only_surface(vocabulary))
    item_ids = np.unique(frame["item_id"].to_numpy())
    features, feature_names = _movies_features(movies_path, item_ids) if movies_path else (None, [])
    tag_rule = f"; one tag event per (user, movie, timestamp) -> {TAG_ACTION}" if tags_path else ""
    info = {
        "source": "movielens-csv",
        "path": str(ratings_path),
        "tags_path": str(tags_path) if tags_path else None,
        "movies_path": str(movies_path) if movies_path else None,
        "outcomes": _rating_rule() + tag_rule,
        "strong_rating": STRONG_RATING,
        "surface": _only_surface(vocabulary),
        "item_features": feature_names,
    }
    return _event_log(name, frame, item_ids, features, info)


def _load_folder(path: Path, vocabulary: Vocabulary) -> EventLog:
    if (path / EVENTS_FILE).exists():
        return EventLog.read(path)
    if is_event_log(pafs.LocalFileSystem(), str(path.resolve())):
        return EventLog.read_sink(str(path), dataset_name(path))
    if (path / UDATA_FILE).exists():
        return load_movielens_udata(path / UDATA_FILE, vocabulary)
    if (path / RATINGS_FILE).exists():
        return load_movielens_csv(path / RATINGS_FILE, vocabulary=vocabulary)
    raise ValueError(
        f"folder {path} holds none of {EVENTS_FILE}, date=YYYY-MM-DD/, {UDATA_FILE}, {RATINGS_FILE}; "
        f"pass {ACCEPTED_FORMATS}"
    )


def _check_s3rec_first_line(path: Path) -> None:
    """Fail fast, before parsing a whole file, on a file in some other format."""
    with path.open("rb") as stream:
        first = stream.readline(1 << 16).decode("utf-8", errors="replace")
    tokens = first.split()
    if not tokens or not all(token.isascii() and token.isdigit() for token in tokens):
        raise ValueError(
            f"{path} is in no format pinrec reads (its first line is {first[:80]!r}); pass {ACCEPTED_FORMATS}"
        )


def _engagement_action(vocabulary: Vocabulary) -> str:
    for action in vocabulary.actions:
        if action not in vocabulary.unsequenced_actions:
            return action
    raise ValueError(
        f"the action vocabulary {vocabulary.actions} has no engagement action (all are unsequenced); "
        "add one such as 'click' to PINREC_ACTIONS"
    )


def _only_surface(vocabulary: Vocabulary) -> str:
    if not vocabulary.surfaces:
        raise ValueError("the surface vocabulary is empty; set PINREC_SURFACES, e.g. to 'home'")
    return vocabulary.surfaces[0]


def _require_actions(vocabulary: Vocabulary, actions: tuple[str, ...]) -> None:
    missing = [action for action in actions if action not in vocabulary.actions]
    if missing:
        raise ValueError(
            f"the action vocabulary {vocabulary.actions} lacks {', '.join(missing)}, which MovieLens "
            "outcomes map to; add it to PINREC_ACTIONS"
        )


def _beside(path: Path, sibling: str, given: Path | None) -> Path | None:
    """An explicitly given companion file must exist; otherwise use the sibling file if there is one."""
    if given is not None:
        given = Path(given)
        if not given.is_file():
            raise FileNotFoundError(f"{given} does not exist")
        return given
    candidate = path.parent / sibling
    return candidate if candidate.is_file() else None


def _read_sequences(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, sequence lengths, all item ids concatenated) of an S3-Rec file."""
    users: list[int] = []
    counts: list[int] = []
    items: list[int] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            tokens = line.split()
            if not tokens:
                continue
            try:
                ids = [int(token) for token in tokens]
            except ValueError:
                raise ValueError(
                    f"{path} line {number} is not an S3-Rec sequence (`user_id item_id ...`, integers only): "
                    f"{line[:80]!r}"
                ) from None
            users.append(ids[0])
            counts.append(len(ids) - 1)
            items.extend(ids[1:])
    if not items:
        raise ValueError(f"{path} holds no interactions; expected lines of `user_id item_id item_id ...`")
    user_ids = np.asarray(users, dtype=np.int64)
    _check_one_line_per_user(path, user_ids)
    return user_ids, np.asarray(counts, dtype=np.int64), np.asarray(items, dtype=np.int64)


def _check_one_line_per_user(path: Path, users: np.ndarray) -> None:
    # Event ids and synthetic timestamps count positions per line, so a repeated user would collide.
    unique, counts = np.unique(users, return_counts=True)
    repeated = unique[counts > 1]
    if repeated.size:
        raise ValueError(
            f"{path} has user {repeated[0]} on {counts[counts > 1][0]} lines; the S3-Rec format holds one "
            "line per user, so merge that user's lines in order"
        )


def _positions(counts: np.ndarray) -> np.ndarray:
    """0, 1, ... within each consecutive run of `counts` events."""
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)


def _event_ids(name: str, users: pd.Series, positions: np.ndarray | pd.Series) -> pd.Series:
    return name + "-" + users.astype(str) + "-" + pd.Series(positions, index=users.index).astype(str)


def _read_udata(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t", header=None)
    if table.shape[1] != 4 or not all(pd.api.types.is_numeric_dtype(t) for t in table.dtypes):
        raise ValueError(
            f"{path} is not a MovieLens u.data file: expected 4 tab-separated numbers per row "
            "(user item rating unix_seconds)"
        )
    table.columns = ["user_id", "item_id", "rating", "seconds"]
    return _without_missing(path, table)


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    table = pd.read_csv(path)
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ValueError(
            f"{path} lacks the column(s) {', '.join(missing)}; expected a header {','.join(columns)}"
        )
    return _without_missing(path, table[list(columns)])


def _without_missing(path: Path, table: pd.DataFrame) -> pd.DataFrame:
    holes = table.isna().any(axis=1)
    if holes.any():
        row = int(np.flatnonzero(holes)[0])
        raise ValueError(
            f"{path} has an empty or malformed value in data row {row + 1}; fix or drop that row"
        )
    return table


def _movielens_columns(table: pd.DataFrame) -> pd.DataFrame:
    return table.rename(columns={"userId": "user_id", "movieId": "item_id", "timestamp": "seconds"})


def _rating_events(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": table["user_id"],
            "item_id": table["item_id"],
            "action": np.where(table["rating"] >= STRONG_RATING, STRONG_ACTION, WEAK_ACTION),
            "ts_ms": table["seconds"].astype("int64") * 1000,
        }
    )


def _tag_events(tags: pd.DataFrame) -> pd.DataFrame:
    groups = _movielens_columns(tags).drop_duplicates(["user_id", "item_id", "seconds"])
    return pd.DataFrame(
        {
            "user_id": groups["user_id"],
            "item_id": groups["item_id"],
            "action": TAG_ACTION,
            "ts_ms": groups["seconds"].astype("int64") * 1000,
        }
    ).reset_index(drop=True)


def _sequence(name: str, frame: pd.DataFrame, surface: str) -> pd.DataFrame:
    """Order each user's events by time, ties in row order (np.lexsort is stable), and number them."""
    order = np.lexsort((frame["ts_ms"].to_numpy(), frame["user_id"].to_numpy()))
    frame = frame.iloc[order].reset_index(drop=True)
    frame["surface"] = surface
    frame["event_id"] = _event_ids(name, frame["user_id"], frame.groupby("user_id", sort=False).cumcount())
    return frame


def _rating_rule() -> str:
    return (
        f"rating >= {STRONG_RATING:g} -> {STRONG_ACTION} (strong), rating < {STRONG_RATING:g} -> "
        f"{WEAK_ACTION} (weak)"
    )


def _multi_hot(item_ids: np.ndarray, pairs: pd.DataFrame, prefix: str) -> tuple[np.ndarray, list[str]]:
    """One column per distinct label of `pairs` (item_id, label), a 1 where the item carries the label.
    Columns cover every label of the metadata, not just of these items, so slices share a layout; a label
    listed twice for one item (LastFM repeats a tag per tagging) still gives 1."""
    labels = np.unique(pairs["label"].to_numpy())
    matrix = np.zeros((len(item_ids), len(labels)), dtype=np.float32)
    known = pairs[np.isin(pairs["item_id"].to_numpy(), item_ids)]
    rows = np.searchsorted(item_ids, known["item_id"].to_numpy())
    matrix[rows, np.searchsorted(labels, known["label"].to_numpy())] = 1.0
    return matrix, [f"{prefix}:{label}" for label in labels]


def _attribute_features(path: Path, item_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    problem = f"{path} is not an S3-Rec item2attributes file ({{item_id: [attribute_id, ...]}})"
    attributes = json.loads(path.read_text())
    if not isinstance(attributes, dict):
        raise ValueError(problem)
    try:
        exploded = pd.Series(attributes, dtype=object).explode().dropna()
        pairs = pd.DataFrame(
            {"item_id": exploded.index.astype("int64"), "label": exploded.to_numpy().astype("int64")}
        )
    except (ValueError, TypeError) as error:
        raise ValueError(problem) from error
    return _multi_hot(item_ids, pairs, "attribute")


def _ml100k_features(path: Path, item_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Multi-hot genres and a one-hot release decade (zero where the year is unknown, e.g. 'unkonwn')."""
    # QUOTE_NONE: titles contain bare quotes; keep_default_na: a title like "NA" is still a title.
    table = pd.read_csv(path, sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False)
    table.columns = [column.split(":")[0] for column in table.columns]
    missing = [column for column in ("item_id", "release_year", "class") if column not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)} of the ml-100k.item header")
    table["item_id"] = table["item_id"].astype("int64")
    genres = _labels(table, table["class"].str.split(" "))
    years = pd.to_numeric(table["release_year"], errors="coerce")
    dated = table[years.notna()]
    decades = pd.DataFrame(
        {
            "item_id": dated["item_id"],
            "label": (years[years.notna()] // 10 * 10).astype("int64").astype(str) + "s",
        }
    )
    genre_matrix, genre_names = _multi_hot(item_ids, genres, "genre")
    decade_matrix, decade_names = _multi_hot(item_ids, decades, "decade")
    return np.hstack([genre_matrix, decade_matrix]), genre_names + decade_names


def _movies_features(path: Path, item_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    movies = _movielens_columns(_read_csv(path, ("movieId", "genres")))
    return _multi_hot(item_ids, _labels(movies, movies["genres"].str.split("|")), "genre")


def _labels(table: pd.DataFrame, label_lists: pd.Series) -> pd.DataFrame:
    """(item_id, label) pairs from one list of labels per item, without placeholder labels."""
    pairs = pd.DataFrame({"item_id": table["item_id"], "label": label_lists}).explode("label")
    pairs["label"] = pairs["label"].str.strip()
    return pairs[pairs["label"].ne("") & ~pairs["label"].isin(NO_GENRE)].reset_index(drop=True)


def _event_log(
    name: str, frame: pd.DataFrame, item_ids: np.ndarray, features: np.ndarray | None, info: dict
) -> EventLog:
    if features is None:
        item_ids = None
    else:
        undescribed = int((features.sum(axis=1) == 0).sum())
        if undescribed:
            log.warning(
                "%s: %d of %d items have no content features (zero rows)", name, undescribed, len(item_ids)
            )
    events = EventLog.from_frame(name, frame, item_ids=item_ids, item_features=features, info=info)
    log.info("loaded %s: %d events, %d users, %d items", name, len(frame), events.num_users, events.num_items)
    return events
