"""Per-surface finetuning (method §6): a new head for one surface, trained on that surface's sessions. The
history is the user's positive actions before the session; the session's engaged items are the positives
(conditioned on their outcome); the items it showed but the user did not engage with are hard negatives.
A session with a context (a search query, a related subject) is trained on the hidden state the server
computes for its request: the history, then the context token (`prefill_request`). The backbone and item
tower are frozen by default, so their outputs are computed once and only the head trains (seconds, not
minutes)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pinrec.model.artifacts import data_fingerprint
from pinrec.model.data.contexts import QueryItems, context_vectors, event_contexts, search_query_items
from pinrec.model.data.eventlog import positive_mask
from pinrec.model.data.prepare import PreparedData
from pinrec.model.data.sequences import positives_before, recent_histories
from pinrec.model.distributed import current, on_training_device, user_shards
from pinrec.model.generate import in_groups, prefill_request
from pinrec.model.loss import item_log_frequency, sampled_softmax_loss
from pinrec.model.network import PinRecModel
from pinrec.model.train import TrainConfig, TrainResult, fit, run_key

log = logging.getLogger(__name__)

MAX_HARD_NEGATIVES = 32  # per positive, the session's shown-but-not-engaged items (ours)


@dataclass
class SurfaceSessions:
    """One row per engaged item in a session of the surface."""

    rows: np.ndarray  # user row in Histories
    ends: np.ndarray  # history = the user's positives before the session: [offsets[row], end)
    targets: np.ndarray  # engaged item indices
    outcomes: np.ndarray  # their action codes
    hard_negatives: np.ndarray  # (N, H) shown-not-engaged item indices of the session, 0-padded
    sessions: np.ndarray  # session ids (validation splits by session)
    gaps_ms: np.ndarray  # time from the last history action to the engagement
    first: np.ndarray  # bool: the session's first engagement (the "next" action after the history)
    starts_ms: np.ndarray  # the session's start: the time of its request (and of its context token)
    subjects: np.ndarray  # the session's subject item index (related; 0: none)
    query_ids: np.ndarray  # the session's search query id (NO_QUERY: none)


def surface_sessions(data: PreparedData, surface: int, users: np.ndarray) -> SurfaceSessions:
    """Sessions of `surface` by the users at these Histories rows (held-out users excluded by the caller)."""
    events = data.log.events
    name = data.vocabulary.surfaces[surface]
    on_surface = events[(events["surface"] == name) & events["session_id"].notna()]
    on_surface = on_surface[on_surface["user_id"].isin(data.histories.user_ids[users])]
    positive = positive_mask(on_surface, data.vocabulary)
    items = data.catalog.index_of(on_surface["item_id"].to_numpy(dtype=np.int64))
    session_ids = on_surface["session_id"].to_numpy(dtype=np.int64)
    shown: dict[int, set[int]] = {}
    for session, item in zip(session_ids[~positive], items[~positive], strict=True):
        shown.setdefault(session, set()).add(int(item))
    engaged = on_surface[positive]
    engaged_items = items[positive]
    engaged_sessions = session_ids[positive]
    engaged_by_session: dict[int, set[int]] = {}
    for session, item in zip(engaged_sessions, engaged_items, strict=True):
        engaged_by_session.setdefault(session, set()).add(int(item))
    session_start = on_surface.groupby("session_id")["ts_ms"].min()

    histories = data.histories
    rows = np.searchsorted(histories.user_ids, engaged["user_id"].to_numpy(dtype=np.int64))
    starts = session_start.loc[engaged_sessions].to_numpy(dtype=np.int64)
    ends = positives_before(histories, rows, starts)
    subjects, query_ids = event_contexts(engaged, data.catalog)
    hard = np.zeros((len(engaged), MAX_HARD_NEGATIVES), dtype=np.int64)
    for n, session in enumerate(engaged_sessions):
        negatives = sorted(shown.get(session, set()) - engaged_by_session[session])[:MAX_HARD_NEGATIVES]
        hard[n, : len(negatives)] = negatives
    action_codes = {a: c for c, a in enumerate(data.vocabulary.actions)}
    keep = ends > histories.offsets[rows]  # a session needs some history before it
    engaged_times = engaged["ts_ms"].to_numpy(dtype=np.int64)
    first = engaged_times == engaged.groupby("session_id")["ts_ms"].transform("min").to_numpy(dtype=np.int64)
    gaps = engaged_times - histories.times[np.maximum(ends - 1, 0)]
    return SurfaceSessions(
        rows[keep],
        ends[keep],
        engaged_items[keep],
        engaged["action"].map(action_codes).to_numpy(dtype=np.int64)[keep],
        hard[keep],
        engaged_sessions[keep],
        gaps[keep],
        first[keep],
        starts[keep],
        subjects[keep],
        query_ids[keep],
    )


def allowed_offsets(sessions: SurfaceSessions, offsets_ms: tuple[int, ...]) -> np.ndarray:
    """(N, K) which of the head's offsets each engagement is a valid target for: "next" for the session's
    first engagement, a window when the engagement falls within it after the last history action (as in
    pretraining). An engagement valid for none (far after the history) trains "next"."""
    allowed = np.stack(
        [sessions.first if offset == 0 else sessions.gaps_ms <= offset for offset in offsets_ms], axis=1
    )
    allowed[~allowed.any(axis=1), 0] = True
    return allowed


def draw_offsets(allowed: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """One allowed offset per engagement, uniformly."""
    scores = np.where(allowed, rng.random(allowed.shape), -1.0)
    return torch.from_numpy(scores.argmax(axis=1))


@dataclass
class _Backbone:
    """What a head trains on for each engagement: the hidden state the server computes for its session's
    request (history, then the context token if the session has one, with the engagement's outcome as the
    feedback action), from an item table (V + 1, C) that also gives the context vectors."""

    model: PinRecModel
    data: PreparedData
    sessions: SurfaceSessions
    surface: int
    query_items: QueryItems

    def hidden_states(self, picked: np.ndarray, table: torch.Tensor) -> torch.Tensor:
        """(len(picked), C) for these engagements, grouped by (has context, outcome) for the prefill."""
        sessions = self.sessions
        contexts, present = context_vectors(
            table, sessions.subjects[picked], sessions.query_ids[picked], self.query_items
        )  # (N, C), (N,)
        present = present.cpu().numpy()
        outcomes = sessions.outcomes[picked]

        def group(rows: np.ndarray) -> torch.Tensor:
            at = picked[rows]
            inputs = recent_histories(
                self.data.histories, sessions.rows[at], sessions.ends[at], self.model.config.max_len
            )
            last, _ = prefill_request(
                self.model,
                inputs.to(table.device),
                torch.from_numpy(sessions.starts_ms[at]).to(table.device),
                int(outcomes[rows[0]]),
                self.surface,
                decode_steps=0,
                context=contexts[rows] if present[rows[0]] else None,
                item_table=table,
            )
            return last  # (n, C)

        return in_groups(outcomes * 2 + present, group)  # one group per (outcome, has context)


@dataclass
class _FrozenBackbone(_Backbone):
    """Hidden states and item vectors computed once: only the head trains."""

    def __post_init__(self) -> None:
        self.model.eval()
        with torch.no_grad():
            self.table = self.model.items.table()
            self.hidden = self._all_hidden_states()

    def _all_hidden_states(self, chunk: int = 1024) -> torch.Tensor:
        """Every engagement's hidden state, in chunks of similar history lengths (little padding)."""
        sessions = self.sessions
        out = self.table.new_zeros(len(sessions.rows), self.model.config.dim)
        order = np.argsort(sessions.ends - self.data.histories.offsets[sessions.rows], kind="stable")
        for first in range(0, len(order), chunk):
            part = order[first : first + chunk]
            out[torch.from_numpy(part).to(out.device)] = self.hidden_states(part, self.table)
        return out

    def hidden_of(self, rows: torch.Tensor) -> torch.Tensor:
        return self.hidden[rows]

    def items(self, items: torch.Tensor) -> torch.Tensor:
        return self.table[items]

    def all_items(self) -> torch.Tensor:
        return self.table[1:]


@dataclass
class _TrainedBackbone(_Backbone):
    """Backbone and item tower train with the head (--unfreeze-backbone): recomputed every batch, the item
    table included (the context vectors come from it)."""

    def __post_init__(self) -> None:
        self.items = self.model.items

    def hidden_of(self, rows: torch.Tensor) -> torch.Tensor:
        table = self.model.items.table()
        return self.hidden_states(rows.cpu().numpy(), table)

    def all_items(self) -> torch.Tensor:
        return self.model.items.all_items()


def _chunks(order: np.ndarray, size: int) -> list[np.ndarray]:
    return [order[i : i + size] for i in range(0, len(order), size)]


@on_training_device
def finetune_surface(
    model: PinRecModel,
    data: PreparedData,
    surface: int,
    users: np.ndarray,
    train_config: TrainConfig,
    batch_size: int = 1024,
    valid_share: float = 0.1,
    checkpoint: Path | None = None,
    freeze_backbone: bool = True,
) -> TrainResult:
    """Add (or replace) the head named after the surface and train it, with the backbone frozen by default."""
    name = data.vocabulary.surfaces[surface]
    if not model.config.query_mlp:
        raise ValueError(f"a {model.config.variant} model has no head to finetune (q = normalize(h))")
    sessions = surface_sessions(data, surface, users)
    if len(sessions.rows) < 10:
        raise ValueError(
            f"surface {name!r} has {len(sessions.rows)} engaged items in sessions; too few to finetune"
        )
    query_items = search_query_items(data.log, data.catalog, data.vocabulary)
    backbone = (_FrozenBackbone if freeze_backbone else _TrainedBackbone)(
        model, data, sessions, surface, query_items
    )
    head = model.add_head(name)
    rng = np.random.default_rng(train_config.seed)
    unique_sessions = np.unique(sessions.sessions)
    valid_sessions = rng.choice(
        unique_sessions, size=max(1, int(len(unique_sessions) * valid_share)), replace=False
    )
    is_valid = np.isin(sessions.sessions, valid_sessions)
    train_rows, valid_rows = np.flatnonzero(~is_valid), np.flatnonzero(is_valid)
    group = current()
    device = group.device  # where the model is (on_training_device)
    log_frequency = item_log_frequency(torch.from_numpy(data.catalog.counts)).to(device)
    generator = torch.Generator().manual_seed(train_config.seed)  # CPU draws: alike on every device
    targets = torch.from_numpy(sessions.targets).to(device)
    outcomes = torch.from_numpy(sessions.outcomes).to(device)
    hard = torch.from_numpy(sessions.hard_negatives).to(device)
    # The head answers for every offset, so it is finetuned on every offset an engagement is valid for.
    allowed = allowed_offsets(sessions, model.config.offsets)
    valid_offsets = draw_offsets(allowed, np.random.default_rng(train_config.seed))

    def queries_of(at: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Queries of these engagements (their rows, on the model's device) for their offsets."""
        conditions = (outcomes[at], torch.full((len(at),), surface, device=device), offsets.to(device))
        return head(backbone.hidden_of(at), *conditions)

    shards = train_config.data_shards or group.world_size
    shard_of_row = user_shards(data.histories.user_ids[sessions.rows[train_rows]], shards)

    def batches(epoch: int):
        rng = np.random.default_rng([train_config.seed, epoch])
        offsets = draw_offsets(allowed, rng)
        if shards == 1:
            order = rng.permutation(train_rows)
            return [(torch.from_numpy(rows), offsets[rows]) for rows in _chunks(order, batch_size)]
        # A global batch: a micro-batch from every shard of users (model.distributed), this process's here.
        micro = max(1, batch_size // shards)
        parts, steps = group.sharded_parts(
            shards,
            train_config.seed,
            epoch,
            lambda s, rng: _chunks(rng.permutation(train_rows[shard_of_row == s]), micro),
        )
        merged = (np.concatenate([part[step] for part in parts]) for step in range(steps))
        return [(torch.from_numpy(rows), offsets[rows]) for rows in merged]

    def step_loss(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        rows, offsets = batch
        at = rows.to(device)  # a no-op where DistributedDataParallel moved the batch already
        return sampled_softmax_loss(
            queries_of(at, offsets),
            targets[at],
            backbone.items,
            log_frequency,
            model.config.random_negatives,
            model.config.temperature,
            generator,
            hard_negatives=hard[at],
        )

    def validate(chunk: int = 1024) -> float:
        """How often the engaged item is in the top 10 of all items, on held-out sessions (scored in chunks:
        a GPU holds less than the host)."""
        items = backbone.all_items()
        hits = 0
        for part in _chunks(valid_rows, chunk):
            at = torch.from_numpy(part).to(device)
            top = (queries_of(at, valid_offsets[part]) @ items.T).topk(10, dim=1).indices + 1
            hits += int((top == targets[at, None]).any(dim=1).sum())
        return hits / max(len(valid_rows), 1)

    trained = head if freeze_backbone else model
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in trained.parameters():
        parameter.requires_grad_(True)
    result = fit(
        trained,
        trained.parameters(),
        batches,
        step_loss,
        validate,
        replace(train_config, validate_start=True),  # the new head must beat the shared one it copies
        checkpoint,
        f"finetune {name}",
        # What a checkpoint must match to be resumed (hashing the events is skipped without one).
        run_key(
            name,
            data_fingerprint(data.log.events),
            model.config.to_dict(),
            train_config.seed,
            shards,
            batch_size,
            freeze_backbone,
        )
        if checkpoint is not None
        else "",
        generator,
    )
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    log.info(
        "finetuned the %s head on %d engagements: validation hit@10 %.4f",
        name,
        len(train_rows),
        result.best_metric,
    )
    return result
