"""From an event log to what the model trains and is evaluated on: the item catalog (contiguous indices,
content features, frequencies), every user's sequence of positive actions, the splits of the benchmark
protocols, and padded training batches with next-item and future-window (multi-token) targets.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pinrec.featurestore.schema import Vocabulary
from pinrec.model.data.eventlog import EventLog


@dataclass
class ItemCatalog:
    """Items get indices 1..V (0 is padding) in the order of their raw ids."""

    item_ids: np.ndarray  # (V,) raw item ids, sorted; index i + 1 is item_ids[i]
    content: np.ndarray | None  # (V + 1, F) float32 content features, row 0 zeros; None without features
    counts: np.ndarray  # (V + 1,) positive actions per item in the whole log (for logQ and popularity)

    @property
    def size(self) -> int:
        return len(self.item_ids)

    def index_of(self, raw_ids: np.ndarray) -> np.ndarray:
        """Indices of raw item ids; 0 for ids not in the catalog."""
        return item_indices(self.item_ids, raw_ids)


def item_indices(item_ids: np.ndarray, raw_ids: np.ndarray) -> np.ndarray:
    """Indices 1..V of raw item ids in a sorted catalog of raw ids (V,); 0 for ids not in it."""
    raw_ids = np.asarray(raw_ids, dtype=np.int64)
    at = np.searchsorted(item_ids, raw_ids).clip(0, max(len(item_ids) - 1, 0))
    return np.where(item_ids[at] == raw_ids, at + 1, 0) if len(item_ids) else np.zeros_like(raw_ids)


@dataclass
class Histories:
    """Every user's positive actions, oldest first, as one flat array per field with per-user offsets."""

    user_ids: np.ndarray  # (U,) raw user ids
    offsets: np.ndarray  # (U + 1,) user u's events are [offsets[u], offsets[u + 1])
    items: np.ndarray  # item indices
    actions: np.ndarray  # action codes
    surfaces: np.ndarray  # surface codes
    times: np.ndarray  # ms

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row_of(self, user_id: int) -> int:
        row = int(np.searchsorted(self.user_ids, user_id))
        if row >= len(self.user_ids) or self.user_ids[row] != user_id:
            raise KeyError(f"user {user_id} has no positive actions")
        return row


def positives_before(histories: Histories, rows: np.ndarray, times_ms: np.ndarray) -> np.ndarray:
    """(N,) the exclusive end of each row's positive actions strictly before its time: a session's history."""
    return np.array(
        [
            histories.offsets[row]
            + np.searchsorted(histories.times[histories.offsets[row] : histories.offsets[row + 1]], time)
            for row, time in zip(rows, times_ms, strict=True)
        ],
        dtype=np.int64,
    )


def build_item_catalog(
    log: EventLog, positives: np.ndarray, item_ids: np.ndarray | None = None
) -> ItemCatalog:
    events = log.events
    if item_ids is None:
        item_ids = np.unique(events["item_id"].to_numpy(dtype=np.int64))
    catalog = ItemCatalog(item_ids, None, np.zeros(len(item_ids) + 1, dtype=np.int64))
    np.add.at(catalog.counts, catalog.index_of(events["item_id"].to_numpy(dtype=np.int64)[positives]), 1)
    if log.item_features is not None:
        content = np.zeros((len(item_ids) + 1, log.item_features.shape[1]), dtype=np.float32)
        rows = catalog.index_of(log.item_ids)
        content[rows[rows > 0]] = log.item_features[rows > 0]
        catalog.content = content
    return catalog


def build_histories(
    log: EventLog, catalog: ItemCatalog, vocabulary: Vocabulary, positives: np.ndarray
) -> Histories:
    events = log.events[positives]  # already sorted by (user_id, ts_ms)
    user_column = events["user_id"].to_numpy(dtype=np.int64)
    user_ids, starts = np.unique(user_column, return_index=True)
    action_codes = {name: code for code, name in enumerate(vocabulary.actions)}
    surface_codes = {name: code for code, name in enumerate(vocabulary.surfaces)}
    return Histories(
        user_ids=user_ids,
        offsets=np.append(starts, len(events)).astype(np.int64),
        items=catalog.index_of(events["item_id"].to_numpy(dtype=np.int64)),
        actions=events["action"].map(action_codes).to_numpy(dtype=np.int64),
        surfaces=events["surface"].map(surface_codes).to_numpy(dtype=np.int64),
        times=events["ts_ms"].to_numpy(dtype=np.int64),
    )


# --- evaluation examples -------------------------------------------------------------------------------


@dataclass
class Examples:
    """Evaluation cases: user row, the history is the user's events [offsets[row], end), targets are flat
    event positions grouped by target_offsets (one group per case)."""

    rows: np.ndarray
    ends: np.ndarray
    target_offsets: np.ndarray  # (N + 1,)
    targets: np.ndarray  # event positions in Histories

    def __len__(self) -> int:
        return len(self.rows)

    def first_targets(self) -> Examples:
        """The same cases with only their first (earliest) target: the next-item view of a window."""
        single = np.arange(len(self.rows) + 1, dtype=np.int64)
        return Examples(self.rows, self.ends, single, self.targets[self.target_offsets[:-1]])

    def subset(self, keep: np.ndarray) -> Examples:
        groups = [self.targets[self.target_offsets[i] : self.target_offsets[i + 1]] for i in keep]
        sizes = np.array([len(g) for g in groups], dtype=np.int64)
        return Examples(
            self.rows[keep],
            self.ends[keep],
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64),
        )


def _single_target_examples(rows: np.ndarray, ends: np.ndarray) -> Examples:
    return Examples(rows, ends, np.arange(len(rows) + 1, dtype=np.int64), ends.copy())


@dataclass
class LeaveOneOut:
    """Protocol A: the last action is the test target, the one before it validates, the rest trains."""

    train_ends: np.ndarray  # (U,) exclusive end of each user's training events
    valid: Examples
    test: Examples


def leave_one_out(histories: Histories) -> LeaveOneOut:
    starts, ends = histories.offsets[:-1], histories.offsets[1:]
    eligible = np.flatnonzero(ends - starts >= 3)
    train_ends = np.where(ends - starts >= 3, ends - 2, ends)
    return LeaveOneOut(
        train_ends=train_ends,
        valid=_single_target_examples(eligible, ends[eligible] - 2),
        test=_single_target_examples(eligible, ends[eligible] - 1),
    )


@dataclass
class FutureWindow:
    """Protocol B: held-out users never seen in training; for each, the history is everything before a cut
    and the targets are the positive actions in a window after it."""

    train_ends: np.ndarray  # (U,) held-out users get an empty training range
    valid: Examples
    test: Examples
    window_ms: int  # the targets are the actions in (cut time, cut time + window_ms]


def future_window(
    histories: Histories,
    window_ms: int,
    holdout_share: float = 0.1,
    seed: int = 0,
    min_history: int = 5,
) -> FutureWindow:
    rng = np.random.default_rng(seed)
    users = len(histories.user_ids)
    starts, ends = histories.offsets[:-1], histories.offsets[1:]
    order = rng.permutation(users)
    held = order[: int(users * holdout_share * 2)]
    valid_users, test_users = held[: len(held) // 2], held[len(held) // 2 :]
    train_ends = ends.copy()
    train_ends[held] = starts[held]

    def cases(rows: np.ndarray) -> Examples:
        kept_rows, cut_at, groups = [], [], []
        for row in rows:
            start, end = starts[row], ends[row]
            if end - start < min_history + 1:
                continue
            # Cut between 50% and 90% of the user's actions, at a real time boundary.
            cut = start + int(
                rng.integers((end - start) // 2, max((end - start) * 9 // 10, (end - start) // 2 + 1))
            )
            cut = max(cut, start + min_history)
            t_cut = histories.times[cut - 1]
            window = np.arange(cut, end)
            window = window[
                (histories.times[window] > t_cut) & (histories.times[window] <= t_cut + window_ms)
            ]
            if len(window):
                kept_rows.append(row)
                cut_at.append(cut)
                groups.append(window)
        sizes = np.array([len(g) for g in groups], dtype=np.int64)
        return Examples(
            np.array(kept_rows, dtype=np.int64),
            np.array(cut_at, dtype=np.int64),
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64),
        )

    return FutureWindow(train_ends, cases(valid_users), cases(test_users), window_ms)


# --- model inputs ------------------------------------------------------------------------------------


@dataclass
class HistoryBatch:
    """Left-padded model inputs (B, T)."""

    items: torch.Tensor
    actions: torch.Tensor
    surfaces: torch.Tensor
    times: torch.Tensor

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {
            "items": self.items,
            "actions": self.actions,
            "surfaces": self.surfaces,
            "times_ms": self.times,
        }

    def to(self, device: torch.device) -> HistoryBatch:
        return HistoryBatch(*(t.to(device) for t in (self.items, self.actions, self.surfaces, self.times)))


def history_batch(histories: Histories, starts: np.ndarray, ends: np.ndarray) -> HistoryBatch:
    """Events [start, end) of each row, left-padded to the longest."""
    width = int((ends - starts).max()) if len(starts) else 0
    columns = (histories.items, histories.actions, histories.surfaces, histories.times)
    out = [np.zeros((len(starts), max(width, 1)), dtype=np.int64) for _ in columns]
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        if end > start:
            for array, column in zip(out, columns, strict=True):
                array[i, width - (end - start) :] = column[start:end]
    # Padding repeats the first real time so that gaps and sinusoids stay finite.
    first = out[3][np.arange(len(starts)), (width - (ends - starts)).clip(max=max(width - 1, 0))]
    out[3] = np.where(out[0] > 0, out[3], first[:, None])
    return HistoryBatch(*(torch.from_numpy(a) for a in out))


def recent_histories(histories: Histories, rows: np.ndarray, ends: np.ndarray, max_len: int) -> HistoryBatch:
    starts = np.maximum(histories.offsets[rows], ends - max_len)
    return history_batch(histories, starts, ends)


@dataclass
class TrainingBatch:
    inputs: HistoryBatch  # (B, T)
    targets: torch.Tensor  # (B, T, K) item index per position and offset, 0 = no target
    target_actions: torch.Tensor  # (B, T, K)
    target_surfaces: torch.Tensor  # (B, T, K)

    @property
    def tokens(self) -> int:
        """History tokens the model reads (padding excluded): what training throughput counts."""
        return int((self.inputs.items > 0).sum())

    def to(self, device: torch.device) -> TrainingBatch:
        return TrainingBatch(
            self.inputs.to(device),
            *(t.to(device) for t in (self.targets, self.target_actions, self.target_surfaces)),
        )


class Epoch:
    """An epoch's batches, each built when iterated; the count is known up front (progress bars)."""

    def __init__(self, batches: list[np.ndarray], build: Callable[[np.ndarray], TrainingBatch]) -> None:
        self.batches, self.build = batches, build

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[TrainingBatch]:
        return (self.build(rows) for rows in self.batches)


def training_batches(
    histories: Histories,
    train_ends: np.ndarray,
    offsets_ms: tuple[int, ...],
    max_len: int,
    batch_users: int,
    rng: np.random.Generator,
    sampled_windows: int = 0,
    window_share: float = 1.0,
    users: np.ndarray | None = None,
) -> Epoch:
    """One pass over the users in random order. Each user contributes a window of up to max_len + 1 of their
    training events ending at a random point (all of them when they fit); position j predicts event j + 1
    ("next", offset 0) and, for each window offset (or `sampled_windows` of them drawn per position), one
    event drawn uniformly from those within the window after event j (multi-token targets; the draws change
    every epoch). Only a `window_share` of the positions, drawn at random, keep their window targets.
    `users` (a boolean mask over rows) limits the pass to some users: a data shard."""
    starts = histories.offsets[:-1]
    trainable = train_ends - starts >= 2
    rows = np.flatnonzero(trainable if users is None else trainable & users)

    def build(chosen: np.ndarray) -> TrainingBatch:
        lengths = train_ends[chosen] - starts[chosen]
        window_ends = starts[chosen] + rng.integers(np.minimum(lengths, max_len + 1), lengths + 1)
        window_starts = np.maximum(starts[chosen], window_ends - (max_len + 1))
        inputs = history_batch(histories, window_starts, window_ends - 1)
        width = inputs.items.shape[1]
        targets = np.zeros((len(chosen), width, len(offsets_ms)), dtype=np.int64)
        for i, row in enumerate(chosen):
            positions = np.arange(window_starts[i], window_ends[i] - 1)  # events that are inputs
            column = width - len(positions) + np.arange(len(positions))
            for k, offset in enumerate(offsets_ms):
                targets[i, column, k] = _future_targets(histories, positions, train_ends[row], offset, rng)
        if sampled_windows and len(offsets_ms) > 1:
            _keep_sampled_windows(targets, sampled_windows, rng)
        if window_share < 1:
            targets[..., 1:][rng.random(targets.shape[:2]) >= window_share] = 0
        return TrainingBatch(
            inputs,
            torch.from_numpy(np.where(targets > 0, histories.items[targets], 0)),
            torch.from_numpy(histories.actions[targets]),
            torch.from_numpy(histories.surfaces[targets]),
        )

    lengths = np.minimum(train_ends[rows] - starts[rows], max_len)
    return Epoch(_length_bucketed(rows, lengths, batch_users, rng), build)


class ShardedEpoch:
    """A process's epoch of a sharded global batch: step by step, one micro-batch of each shard it owns,
    concatenated in shard order; `steps` (the fewest batches of any shard, agreed by every process) bounds
    it."""

    def __init__(self, shard_epochs: list[Epoch], steps: int) -> None:
        self.shard_epochs, self.steps = shard_epochs, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[TrainingBatch]:
        steps = itertools.islice(zip(*self.shard_epochs, strict=False), self.steps)  # shards differ in length
        return (concat_training_batches(parts) for parts in steps)


def _left_pad(values: torch.Tensor, width: int, fill: torch.Tensor | int) -> torch.Tensor:
    """values (B, T, ...) left-padded to (B, width, ...) with fill (a scalar, or one value per row)."""
    missing = width - values.shape[1]
    if missing == 0:
        return values
    pad = torch.zeros((values.shape[0], missing, *values.shape[2:]), dtype=values.dtype)
    pad += fill if isinstance(fill, int) else fill.reshape(-1, *([1] * (values.dim() - 1)))
    return torch.cat([pad, values], dim=1)


def concat_training_batches(parts: tuple[TrainingBatch, ...]) -> TrainingBatch:
    """The batches' rows in order, left-padded to the widest (times repeat each row's first, as
    history_batch pads)."""
    if len(parts) == 1:
        return parts[0]
    width = max(part.inputs.items.shape[1] for part in parts)

    def rows(get, fill_of) -> torch.Tensor:
        return torch.cat([_left_pad(get(part), width, fill_of(part)) for part in parts])

    inputs = HistoryBatch(
        rows(lambda p: p.inputs.items, lambda p: 0),
        rows(lambda p: p.inputs.actions, lambda p: 0),
        rows(lambda p: p.inputs.surfaces, lambda p: 0),
        rows(lambda p: p.inputs.times, lambda p: p.inputs.times[:, 0]),
    )
    return TrainingBatch(
        inputs,
        rows(lambda p: p.targets, lambda p: 0),
        rows(lambda p: p.target_actions, lambda p: 0),
        rows(lambda p: p.target_surfaces, lambda p: 0),
    )


def _keep_sampled_windows(targets: np.ndarray, count: int, rng: np.random.Generator) -> None:
    """Keep every next-item target (offset 0) and `count` window targets per position, drawn at random: the
    loss then costs 1 + count predictions per position instead of K, and every window is still learnt."""
    windows = targets.shape[2] - 1
    scores = rng.random((*targets.shape[:2], windows))
    threshold = np.sort(scores, axis=2)[..., min(count, windows) - 1 : min(count, windows)]
    targets[..., 1:][scores > threshold] = 0


def _length_bucketed(
    rows: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool_batches: int = 32
) -> list[np.ndarray]:
    """Batches of rows in random order, each drawn from a pool of similar lengths, so that padding (and the
    transformer's work on it) stays small; short histories dominate public datasets."""
    order = rng.permutation(len(rows))
    batches = []
    pool = batch_size * pool_batches
    for first in range(0, len(order), pool):
        part = order[first : first + pool]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [rows[part[i : i + batch_size]] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _future_targets(
    histories: Histories, positions: np.ndarray, end: int, offset_ms: int, rng: np.random.Generator
) -> np.ndarray:
    """For each event position, the position of one target event (0 = none): the next event for offset 0,
    else a uniform draw among the events within offset_ms after it (up to the training end)."""
    following = positions + 1
    if offset_ms == 0:
        return np.where(following < end, following, 0)
    if not len(positions):
        return positions
    base, times = positions[0], histories.times  # times are sorted within a user
    last = np.searchsorted(times[base:end], times[positions] + offset_ms, side="right") + base - 1
    count = last - positions
    draw = following + np.floor(rng.random(len(positions)) * np.maximum(count, 1)).astype(np.int64)
    return np.where(count >= 1, draw, 0)
