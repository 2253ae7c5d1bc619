"""The synthetic multi-surface world: users with several drifting interests visit a home feed, search and
related-item lists; every item shown is an impression, some are engaged with, and the outcome (click, save,
...) depends on the surface, the item and the user. The generative story, its parameters and what each
benchmark relies on are in model/data/SIMULATION.md.

Everything is vectorised with numpy: the world (items, users, interests per day) is built at once, session
skeletons (user, time, surface, length) at once, and the sessions' contents in rounds, one round per
"k-th session of each user", because a related-items session may start from an item engaged earlier.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import pandas as pd
from tqdm import tqdm

from pinrec.featurestore.schema import Vocabulary
from pinrec.model.data.eventlog import EventLog, positive_mask

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
MINUTE_MS = 60_000
HOME, SEARCH, RELATED = 0, 1, 2  # the simulated surfaces, by position in the vocabulary
LOG_NAME = "synthetic"
DEFAULT_VOCABULARY = Vocabulary()


@dataclass(frozen=True)
class SimulationConfig:
    """Settings of the synthetic world. The defaults give about a million events; `small()` about 50k."""

    # --- size and time
    users: int = 4000  # user ids 1..users
    items: int = 20000  # item ids 1..items
    topics: int = 48  # latent topics K
    days: int = 30  # length of the simulated window
    end_ms: int = 1_767_225_600_000  # window end (2026-01-01T00:00:00Z); fixed so that runs repeat exactly
    seed: int = 0  # every random draw derives from it
    # --- item catalog
    latent_dim: int = 16  # dimension L of the latent space of items, tastes and queries
    content_dim: int = 32  # width of the item content vectors handed to the model
    content_noise: float = 0.25  # std of the Gaussian noise on every content feature
    topic_zipf: float = 0.8  # topic popularity (share of items and of user interests) ~ rank^-topic_zipf
    item_zipf: float = 0.9  # item popularity within its topic ~ rank^-item_zipf
    item_spread: float = 0.6  # distance of an item's latent from its topic centre (noise norm / centre norm)
    archetype_mix: tuple[float, ...] = (0.4, 0.25, 0.2, 0.15)  # share of items per outcome archetype
    archetype_strength: float = 2.0  # outcome-logit bonus an item gives its archetype's outcome
    propensity_noise: float = 0.5  # std of item-specific noise on the outcome logits
    topic_outcome_spread: float = 0.3  # std of per-topic outcome biases (some topics are saved more)
    appeal_spread: float = 0.4  # std of an item's engagement-logit offset (quality)
    clickbait_appeal: float = 0.5  # extra appeal of items whose archetype is the first engagement action
    # --- users
    interests_min: int = 2  # fewest interests (topics) a user has
    interests_max: int = 5  # most interests a user has
    interest_spread: float = 0.8  # std of the initial log-weights of a user's interests
    taste_spread: float = 0.5  # distance of a user's taste within a topic from the topic centre
    drift_sigma: float = 0.15  # daily random-walk std of interest log-weights
    switch_rate: float = 0.02  # daily probability that one interest is replaced by a new topic
    tendency_spread: float = 0.5  # std of a user's personal outcome-logit offsets
    # --- sessions
    sessions_per_day: float = 0.5  # mean sessions per user and day
    activity_spread: float = 0.7  # lognormal std of user activity (mean 1)
    min_sessions: int = 2  # every user has at least this many sessions
    diurnal_amplitude: float = 0.6  # session start density ~ 1 + a cos(2 pi (hour - peak) / 24)
    diurnal_peak_hour: float = 20.0  # hour (UTC) of peak activity
    session_gap_ms: int = 60_000  # least time between the end of a session and the next start
    surface_mix: tuple[float, float, float] = (0.55, 0.25, 0.2)  # share of sessions on home, search, related
    feed_size: int = 24  # most items shown in one home session (each shows uniform [size/2, size])
    search_size: int = 16  # most results shown in one search session
    related_size: int = 16  # most items shown in one related session
    focus_share: float = 0.6  # home: share of slots from the session's focus interest
    interest_share: float = 0.25  # home: share from any current interest (the rest: popular items overall)
    anchor_spread: float = 0.3  # distance of the session's anchor from the user's taste for its topic
    query_variants: int = 8  # distinct queries per topic; query_id = topic * query_variants + variant
    query_spread: float = 0.5  # distance of a query's vector from its topic centre
    query_sharpness: float = 4.0  # how strongly users pick the query variant nearest their taste
    search_explore: float = 0.15  # share of queries on a topic drawn from overall popularity
    related_recent: float = 0.8  # probability that a related session starts from a recent engagement
    related_lookback_days: float = 3.0  # how recent that engagement must be
    shuffle: float = 0.7  # Gumbel noise on search/related ranks (results vary a little per visit)
    # --- engagement and outcome
    engage_bias: tuple[float, float, float] = (-4.9, -4.8, -5.4)  # engagement logit offset per surface
    interest_weight: float = 2.0  # engagement logit per unit of the item topic's interest weight
    taste_weight: float = 2.5  # engagement logit per unit cosine of item and session anchor / taste
    intent_weight: float = 0.4  # interest weight the query topic (search) or subject topic (related) adds
    off_interest_penalty: float = 1.5  # engagement logit penalty for items outside all interests
    position_decay: float = 0.5  # engagement logit lost from the first to the last slot
    outcome_bias: tuple[tuple[float, ...], ...] = (
        (0.6, 0.5, 0.0, -1.0),  # home: clicks and saves
        (0.8, -0.6, 0.6, 0.4),  # search: clicks, long clicks, outbound
        (0.2, 0.9, 0.1, -0.5),  # related: saves
    )  # outcome logit per surface and engagement action (missing entries are 0)
    impression_gap_ms: tuple[int, int] = (800, 3500)  # uniform time between consecutive impressions
    reaction_ms: tuple[int, int] = (1000, 8000)  # uniform time from an impression to its engagement
    dwell_mean_ms: int = 15_000  # mean (exponential) time spent on an engaged item before scrolling on

    def __post_init__(self) -> None:
        positive = ("users", "items", "topics", "days", "latent_dim", "content_dim", "query_variants")
        for name in positive + ("feed_size", "search_size", "related_size", "interests_min", "min_sessions"):
            if getattr(self, name) < 1:
                raise ValueError(f"SimulationConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.items < self.topics:
            raise ValueError(f"every topic needs an item: items ({self.items}) < topics ({self.topics})")
        if not self.interests_min <= self.interests_max <= self.topics:
            raise ValueError("need interests_min <= interests_max <= topics")
        if len(self.surface_mix) != 3 or min(self.surface_mix) < 0 or sum(self.surface_mix) <= 0:
            raise ValueError("surface_mix needs three non-negative shares (home, search, related)")
        if len(self.engage_bias) != 3 or len(self.outcome_bias) != 3:
            raise ValueError("engage_bias and outcome_bias need one entry per surface: home, search, related")
        if not self.archetype_mix or min(self.archetype_mix) < 0 or sum(self.archetype_mix) <= 0:
            raise ValueError("archetype_mix needs non-negative shares with a positive sum")
        if self.focus_share < 0 or self.interest_share < 0 or self.focus_share + self.interest_share > 1:
            raise ValueError("focus_share and interest_share must be non-negative and sum to at most 1")
        for name in ("impression_gap_ms", "reaction_ms"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"SimulationConfig.{name} needs 1 <= low <= high, got {(low, high)}")

    @classmethod
    def small(cls, **overrides) -> SimulationConfig:
        """About 50k events in a second or two: for tests and the demo."""
        return replace(cls(users=420, items=2000, topics=16, days=14), **overrides)

    @classmethod
    def from_dict(cls, values: dict) -> SimulationConfig:
        """The inverse of `asdict` after a JSON round trip (lists become tuples); refuses unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown simulation settings: {', '.join(unknown)}")
        return cls(**{k: _tupled(v) for k, v in values.items()})


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class ActionRoles:
    """Which configured action is the impression and which are engagement outcomes."""

    impression: str
    outcomes: tuple[str, ...]


def action_roles(vocabulary: Vocabulary) -> ActionRoles:
    """The impression is the first action the vocabulary keeps out of sequences (else its first action);
    the outcomes are the sequenced actions. Raises ValueError when the vocabulary cannot carry the world."""
    if len(vocabulary.surfaces) < 3:
        raise ValueError(
            f"the simulation needs at least three surfaces (feed, search, related), "
            f"the vocabulary has {list(vocabulary.surfaces)}"
        )
    if not vocabulary.actions:
        raise ValueError("the vocabulary has no actions")
    unsequenced = [a for a in vocabulary.actions if a in vocabulary.unsequenced_actions]
    impression = unsequenced[0] if unsequenced else vocabulary.actions[0]
    outcomes = tuple(
        a for a in vocabulary.actions if a != impression and a not in vocabulary.unsequenced_actions
    )
    if len(outcomes) < 2:
        raise ValueError(
            f"the simulation needs at least two engagement actions besides the impression "
            f"{impression!r}; the vocabulary has {list(vocabulary.actions)}"
        )
    return ActionRoles(impression, outcomes)


def _fit(values: tuple[float, ...], n: int, fill: float) -> np.ndarray:
    """Per-outcome settings for a vocabulary of n outcomes: truncated, or padded with `fill`."""
    return np.array(list(values[:n]) + [fill] * max(0, n - len(values)), dtype=np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _gumbel(rng: np.random.Generator, shape) -> np.ndarray:
    return -np.log(-np.log(rng.random(shape) + 1e-300) + 1e-300)


def _near(rng: np.random.Generator, centres: np.ndarray, spread: float) -> np.ndarray:
    """Unit vectors around `centres`; `spread` is the noise norm relative to the (unit) centre."""
    dim = centres.shape[-1]
    return _unit(centres + spread / np.sqrt(dim) * rng.standard_normal(centres.shape))


def _sample_rows(weights: np.ndarray, rng: np.random.Generator, draws: int | None = None) -> np.ndarray:
    """Indices drawn in proportion to each row of a (N, C) matrix of non-negative weights: (N,), or
    (N, draws) independent draws per row."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random((len(weights), draws or 1)) * cum[:, -1:]
    index = np.minimum((cum[:, None, :] <= u[:, :, None]).sum(axis=2), weights.shape[1] - 1)
    return index if draws else index[:, 0]


@dataclass(frozen=True)
class World:
    """The ground truth behind the events; arrays are indexed by item id - 1 and user id - 1. Rebuild it
    from a log's info with `build_world(SimulationConfig.from_dict(info["config"]), vocabulary)`."""

    begin_ms: int  # start of the window
    topic_centre: np.ndarray  # (K, L) unit vectors
    topic_popularity: np.ndarray  # (K,) share of items and of user interests
    item_topic: np.ndarray  # (I,) topic of each item
    item_latent: np.ndarray  # (I, L) unit vectors near the topic centre
    item_popularity: np.ndarray  # (I,) share of the item within its topic
    item_archetype: np.ndarray  # (I,) index of the outcome the item is made for
    item_propensity: np.ndarray  # (I, A) outcome logits of the item
    item_appeal: np.ndarray  # (I,) engagement logit offset
    item_features: np.ndarray  # (I, content_dim) float32 noisy view of latent, propensities and appeal
    user_topics: np.ndarray  # (U, days, M) topic of each interest slot per day, -1 where unused
    user_weights: np.ndarray  # (U, days, M) interest weights per day (sum 1), 0 where unused
    user_taste_offset: np.ndarray  # (U, M, L) where in a topic each interest slot's taste lies
    user_tendency: np.ndarray  # (U, A) personal outcome logits
    user_activity: np.ndarray  # (U,) session-rate multiplier, mean 1
    taste_spread: float  # kept to turn offsets into taste vectors

    def day_of(self, ts_ms: np.ndarray) -> np.ndarray:
        days = self.user_topics.shape[1]
        return np.clip((np.asarray(ts_ms) - self.begin_ms) // DAY_MS, 0, days - 1)

    def interest_weight(self, user_ids: np.ndarray, item_ids: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
        """Weight of each item's topic in its user's interests on that day (0 when not an interest)."""
        users, items = np.asarray(user_ids) - 1, np.asarray(item_ids) - 1
        day = self.day_of(ts_ms)
        match = self.user_topics[users, day] == self.item_topic[items][:, None]
        return (match * self.user_weights[users, day]).sum(axis=1)

    def tastes(self, users: np.ndarray, topics: np.ndarray) -> np.ndarray:
        """(N, M, L) taste vectors of users (0-based) for their interest slots' topics (N, M)."""
        offsets = self.user_taste_offset[users] * (self.taste_spread / np.sqrt(self.topic_centre.shape[1]))
        return _unit(self.topic_centre[np.maximum(topics, 0)] + offsets)


def build_world(config: SimulationConfig, vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> World:
    """The catalog and the users, deterministic by config.seed."""
    outcomes = len(action_roles(vocabulary).outcomes)
    items = _build_items(config, outcomes, np.random.default_rng([config.seed, 1]))
    users = _build_users(config, items["topic_popularity"], outcomes, np.random.default_rng([config.seed, 2]))
    return World(
        begin_ms=config.end_ms - config.days * DAY_MS, taste_spread=config.taste_spread, **items, **users
    )


def _build_items(config: SimulationConfig, outcomes: int, rng: np.random.Generator) -> dict:
    k, n = config.topics, config.items
    topic_popularity = (np.arange(k) + 1.0) ** -config.topic_zipf
    topic_popularity /= topic_popularity.sum()
    topic_centre = _unit(rng.standard_normal((k, config.latent_dim)))
    # The first K items cover every topic, so that no topic is empty; ids are then shuffled.
    topics = np.concatenate([np.arange(k), rng.choice(k, size=n - k, p=topic_popularity)])
    item_topic = rng.permutation(topics)
    item_latent = _near(rng, topic_centre[item_topic], config.item_spread)
    item_popularity = _within_topic_popularity(item_topic, config.item_zipf, rng)
    mix = _fit(config.archetype_mix, outcomes, min(config.archetype_mix))
    item_archetype = rng.choice(outcomes, size=n, p=mix / mix.sum())
    topic_outcome = config.topic_outcome_spread * rng.standard_normal((k, outcomes))
    item_propensity = (
        config.archetype_strength * np.eye(outcomes)[item_archetype]
        + topic_outcome[item_topic]
        + config.propensity_noise * rng.standard_normal((n, outcomes))
    )
    clickbait = item_archetype == 0
    item_appeal = config.appeal_spread * rng.standard_normal(n) + config.clickbait_appeal * clickbait
    truth = np.concatenate(
        [item_latent, item_propensity / config.archetype_strength, item_appeal[:, None]], axis=1
    )
    return dict(
        topic_centre=topic_centre,
        topic_popularity=topic_popularity,
        item_topic=item_topic,
        item_latent=item_latent,
        item_popularity=item_popularity,
        item_archetype=item_archetype,
        item_propensity=item_propensity,
        item_appeal=item_appeal,
        item_features=_content_features(truth, config.content_dim, config.content_noise, rng),
    )


def _within_topic_popularity(item_topic: np.ndarray, zipf: float, rng: np.random.Generator) -> np.ndarray:
    """Each item's share of its topic's traffic: Zipf over a random rank within the topic."""
    order = np.lexsort((rng.random(len(item_topic)), item_topic))
    starts = np.searchsorted(item_topic[order], item_topic[order], side="left")
    rank = np.empty(len(item_topic), dtype=np.int64)
    rank[order] = np.arange(len(item_topic)) - starts
    weight = (rank + 1.0) ** -zipf
    totals = np.bincount(item_topic, weights=weight)
    return weight / totals[item_topic]


def _content_features(truth: np.ndarray, dim: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A random linear view of the true item properties plus noise: learnable, but not given away."""
    width = truth.shape[1]
    if dim >= width:
        mixing = np.linalg.qr(rng.standard_normal((dim, width)))[0].T  # orthonormal rows: keeps distances
    else:
        mixing = rng.standard_normal((width, dim)) / np.sqrt(dim)
    noisy = truth @ mixing + noise * rng.standard_normal((len(truth), dim))
    return noisy.astype(np.float32)


def _build_users(
    config: SimulationConfig, topic_popularity: np.ndarray, outcomes: int, rng: np.random.Generator
) -> dict:
    u, m = config.users, config.interests_max
    counts = rng.integers(config.interests_min, config.interests_max + 1, size=u)
    active = np.arange(m)[None, :] < counts[:, None]
    log_pop = np.log(topic_popularity)
    # Gumbel top-m: distinct topics per user, popular topics more often.
    first = np.argsort(-(log_pop + _gumbel(rng, (u, len(log_pop)))), axis=1)[:, :m]
    topics = np.where(active, first, -1)
    log_weight = np.where(active, config.interest_spread * rng.standard_normal((u, m)), -np.inf)
    user_topics = np.empty((u, config.days, m), dtype=np.int64)
    user_weights = np.empty((u, config.days, m))
    for day in range(config.days):
        if day:
            log_weight = log_weight + config.drift_sigma * rng.standard_normal((u, m))
            topics = _switch_interests(topics, counts, config.switch_rate, log_pop, rng)
        user_topics[:, day] = topics
        weight = np.exp(log_weight - log_weight.max(axis=1, keepdims=True))
        user_weights[:, day] = weight / weight.sum(axis=1, keepdims=True)
    activity = np.exp(config.activity_spread * rng.standard_normal(u) - config.activity_spread**2 / 2)
    return dict(
        user_topics=user_topics,
        user_weights=user_weights,
        user_taste_offset=rng.standard_normal((u, m, config.latent_dim)),
        user_tendency=config.tendency_spread * rng.standard_normal((u, outcomes)),
        user_activity=activity,
    )


def _switch_interests(
    topics: np.ndarray, counts: np.ndarray, rate: float, log_pop: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Some users drop one interest for a topic they did not follow (its weight carries over)."""
    switching = np.flatnonzero(rng.random(len(topics)) < rate)
    if not len(switching):
        return topics
    topics = topics.copy()
    slot = (rng.random(len(switching)) * counts[switching]).astype(np.int64)
    logits = np.broadcast_to(log_pop, (len(switching), len(log_pop))).copy()
    held = topics[switching]
    rows = np.repeat(np.arange(len(switching)), held.shape[1])
    logits[rows[held.ravel() >= 0], held.ravel()[held.ravel() >= 0]] = -np.inf
    topics[switching, slot] = np.argmax(logits + _gumbel(rng, logits.shape), axis=1)
    return topics


@dataclass(frozen=True)
class SimulatedCatalog:
    """Precomputed lookups over the items: popularity sampling per topic, search results, neighbours."""

    by_topic: np.ndarray  # (I,) item indices sorted by topic
    topic_keys: np.ndarray  # (I,) topic + cumulative popularity share within topic, increasing
    query_vectors: np.ndarray  # (K, Q, L)
    query_results: np.ndarray  # (K * Q, P) items ranked for each query, -1 where the topic runs out
    neighbours: np.ndarray  # (I, R) nearest items of the same topic, nearest first, -1 padded

    def sample(self, topics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A popularity-weighted item of each given topic."""
        keys = topics + rng.random(np.shape(topics))
        return self.by_topic[np.searchsorted(self.topic_keys, keys, side="right")]


def build_simulated_catalog(config: SimulationConfig, world: World) -> SimulatedCatalog:
    rng = np.random.default_rng([config.seed, 3])
    by_topic = np.lexsort((np.arange(config.items), world.item_topic))
    topics_sorted = world.item_topic[by_topic]
    cum = np.cumsum(world.item_popularity[by_topic])
    starts = np.searchsorted(topics_sorted, np.arange(config.topics))
    ends = np.append(starts[1:], config.items)
    share = cum - np.concatenate([[0.0], cum])[starts][topics_sorted]
    share[ends - 1] = 1.0  # exact, so that a draw below 1 always lands inside its topic
    query_vectors = _near(
        rng, np.repeat(world.topic_centre[:, None], config.query_variants, axis=1), config.query_spread
    )
    results = np.full((config.topics * config.query_variants, 2 * config.search_size), -1, dtype=np.int64)
    neighbours = np.full((config.items, 2 * config.related_size), -1, dtype=np.int64)
    for topic in range(config.topics):
        members = by_topic[starts[topic] : ends[topic]]
        latent = world.item_latent[members]
        relevance = query_vectors[topic] @ latent.T + 0.1 * np.log(world.item_popularity[members])
        rows = slice(topic * config.query_variants, (topic + 1) * config.query_variants)
        results[rows] = _top(members, relevance, results.shape[1])
        neighbours[members] = _neighbours(members, latent, neighbours.shape[1], rng)
    return SimulatedCatalog(by_topic, topics_sorted + share, query_vectors, results, neighbours)


NEIGHBOUR_CANDIDATES = 4096  # a topic larger than this finds related items among a sample of it (ours)


def _neighbours(members: np.ndarray, latent: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    """Each member's `width` most similar other members of its topic; in topics of more than
    NEIGHBOUR_CANDIDATES items (million-item catalogs), among that many sampled members, in row chunks."""
    if len(members) <= NEIGHBOUR_CANDIDATES:
        similarity = latent @ latent.T
        np.fill_diagonal(similarity, -np.inf)
        return _top(members, similarity, width)
    sample = np.sort(rng.choice(len(members), NEIGHBOUR_CANDIDATES, replace=False))
    out = np.empty((len(members), width), dtype=np.int64)
    for first in range(0, len(members), 4096):
        rows = np.arange(first, min(first + 4096, len(members)))
        similarity = latent[rows] @ latent[sample].T
        similarity[rows[:, None] == sample[None, :]] = -np.inf
        out[rows] = _top(members[sample], similarity, width)
    return out


def _top(members: np.ndarray, scores: np.ndarray, width: int) -> np.ndarray:
    """The `width` best members per row of scores, best first; -1 where there are fewer (or -inf)."""
    if scores.shape[1] > 4 * width:  # only the best `width` need sorting
        best = np.argpartition(-scores, width, axis=1)[:, :width]
        inner = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
        order = np.take_along_axis(best, inner, axis=1)
    else:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :width]
    picked = np.where(np.isfinite(np.take_along_axis(scores, order, axis=1)), members[order], -1)
    return np.pad(picked, ((0, 0), (0, width - picked.shape[1])), constant_values=-1)


@dataclass(frozen=True)
class Sessions:
    """Session skeletons sorted by (user, start): what is fixed before any item is shown."""

    user: np.ndarray  # (S,) user index (id - 1)
    start: np.ndarray  # (S,) first planned start, ms after the window begins (moved later if overlapping)
    surface: np.ndarray  # (S,) 0 home, 1 search, 2 related
    shown: np.ndarray  # (S,) items the session asks for
    rank: np.ndarray  # (S,) the user's earlier sessions


def plan_sessions(config: SimulationConfig, world: World) -> Sessions:
    rng = np.random.default_rng([config.seed, 4])
    rate = world.user_activity * config.sessions_per_day * config.days
    counts = np.maximum(rng.poisson(rate), config.min_sessions)
    user = np.repeat(np.arange(config.users), counts)
    minutes = np.arange(1440) / 60.0
    density = 1 + config.diurnal_amplitude * np.cos(2 * np.pi * (minutes - config.diurnal_peak_hour) / 24)
    minute = rng.choice(1440, size=len(user), p=density / density.sum())
    start = (
        rng.integers(0, config.days, size=len(user)) * DAY_MS
        + minute * MINUTE_MS
        + rng.integers(0, MINUTE_MS, size=len(user))
    )
    mix = np.asarray(config.surface_mix, dtype=np.float64)
    surface = rng.choice(3, size=len(user), p=mix / mix.sum())
    size = np.array([config.feed_size, config.search_size, config.related_size])[surface]
    shown = rng.integers((size + 1) // 2, size + 1)
    order = np.lexsort((start, user))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(user)) - np.repeat(first, counts)
    return Sessions(user[order], start[order], surface[order], shown[order], rank)


@dataclass
class _Shown:
    """One round's sessions and their slots (S sessions, P slots, -1 items where nothing is shown)."""

    items: np.ndarray  # (S, P)
    topic: np.ndarray  # (S,) the topic the session is about
    anchor: np.ndarray  # (S, L) the point in latent space the session is about
    intent: np.ndarray  # (S,) topic the user asked for (search query, related subject), else -1
    query: np.ndarray  # (S,) query id on search, else -1
    subject: np.ndarray  # (S,) subject item on related, else -1


class _Simulator:
    """Fills the planned sessions round by round and keeps each user's latest engagement."""

    def __init__(self, config: SimulationConfig, vocabulary: Vocabulary) -> None:
        self.config = config
        self.roles = action_roles(vocabulary)
        self.world = build_world(config, vocabulary)
        self.catalog = build_simulated_catalog(config, self.world)
        self.sessions = plan_sessions(config, self.world)
        self.rng = np.random.default_rng([config.seed, 5])
        outcomes = len(self.roles.outcomes)
        self.outcome_bias = np.stack([_fit(row, outcomes, 0.0) for row in config.outcome_bias])
        self.width = max(config.feed_size, config.search_size, config.related_size)
        self.last_item = np.full(config.users, -1, dtype=np.int64)
        self.last_ms = np.full(config.users, np.iinfo(np.int64).min // 2, dtype=np.int64)

    def run(self, progress: bool) -> dict[str, np.ndarray]:
        """Per slot: session, position, item, interest weight, offsets and outcome; per session: extras."""
        s = self.sessions
        n = len(s.user)
        self.query = np.full(n, -1, dtype=np.int64)
        self.subject = np.full(n, -1, dtype=np.int64)
        self.duration = np.zeros(n, dtype=np.int64)
        rounds = np.split(np.argsort(s.rank, kind="stable"), np.cumsum(np.bincount(s.rank))[:-1])
        parts = []
        with tqdm(total=n, desc="simulate", unit="session", disable=not progress) as bar:
            for idx in rounds:
                parts.append(self._round(idx))
                bar.update(len(idx))
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def _round(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        s, world = self.sessions, self.world
        user = s.user[idx]
        day = np.minimum(s.start[idx] // DAY_MS, self.config.days - 1)
        topics, weights = world.user_topics[user, day], world.user_weights[user, day]
        tastes = world.tastes(user, topics)
        focus = _sample_rows(weights, self.rng)
        shown = self._empty(idx, topics, tastes, focus)
        for surface, fill in ((HOME, self._home), (SEARCH, self._search), (RELATED, self._related)):
            rows = np.flatnonzero(s.surface[idx] == surface)
            if len(rows):
                fill(rows, idx[rows], topics[rows], weights[rows], tastes[rows], focus[rows], shown)
        self.query[idx], self.subject[idx] = shown.query, shown.subject
        return self._engage(idx, shown, topics, weights, tastes)

    def _empty(self, idx, topics, tastes, focus) -> _Shown:
        rows = np.arange(len(idx))
        anchor = _near(self.rng, tastes[rows, focus], self.config.anchor_spread)
        none = np.full(len(idx), -1, dtype=np.int64)
        items = np.full((len(idx), self.width), -1, dtype=np.int64)
        return _Shown(items, topics[rows, focus], anchor, none.copy(), none.copy(), none.copy())

    def _requested(self, sessions: np.ndarray) -> np.ndarray:
        """(n, width) mask of the slots each session asks for."""
        return np.arange(self.width)[None, :] < self.sessions.shown[sessions][:, None]

    def _home(self, rows, sessions, topics, weights, tastes, focus, shown: _Shown) -> None:
        """Mostly the focus interest, some other current interests, some popular items overall."""
        c, rng = self.config, self.rng
        n = len(rows)
        kind = rng.random((n, self.width))
        any_interest = _sample_rows(weights, rng, self.width)
        popular = rng.choice(c.topics, size=(n, self.width), p=self.world.topic_popularity)
        slot_topic = np.where(
            kind < c.focus_share,
            topics[np.arange(n), focus][:, None],
            np.where(
                kind < c.focus_share + c.interest_share, np.take_along_axis(topics, any_interest, 1), popular
            ),
        )
        items = np.where(self._requested(sessions), self.catalog.sample(slot_topic, rng), -1)
        shown.items[rows] = _drop_repeats(items)

    def _search(self, rows, sessions, topics, weights, tastes, focus, shown: _Shown) -> None:
        """A query on the focus topic (sometimes a popular other one), in a variant near the user's taste."""
        c, rng = self.config, self.rng
        n = len(rows)
        explore = rng.random(n) < c.search_explore
        own = topics[np.arange(n), focus]
        topic = np.where(explore, rng.choice(c.topics, size=n, p=self.world.topic_popularity), own)
        taste = tastes[np.arange(n), focus]
        closeness = np.einsum("nql,nl->nq", self.catalog.query_vectors[topic], taste)
        variant = np.argmax(c.query_sharpness * closeness + _gumbel(rng, closeness.shape), axis=1)
        query = topic * c.query_variants + variant
        shown.items[rows] = self._ranked(self.catalog.query_results[query], sessions)
        shown.query[rows] = query
        shown.intent[rows] = topic
        shown.topic[rows] = topic
        # An exploring query is about the query itself, not about the user's taste in their own topic.
        shown.anchor[rows] = np.where(
            (topic == own)[:, None], shown.anchor[rows], self.catalog.query_vectors[topic, variant]
        )

    def _related(self, rows, sessions, topics, weights, tastes, focus, shown: _Shown) -> None:
        """Items near a subject: a recent engagement of the user, else a popular item of the focus topic."""
        c, rng, world = self.config, self.rng, self.world
        user = self.sessions.user[sessions]
        recent = (
            (self.last_item[user] >= 0)
            & (self.sessions.start[sessions] - self.last_ms[user] <= c.related_lookback_days * DAY_MS)
            & (rng.random(len(rows)) < c.related_recent)
        )
        popular = self.catalog.sample(topics[np.arange(len(rows)), focus], rng)
        subject = np.where(recent, self.last_item[user], popular)
        shown.items[rows] = self._ranked(self.catalog.neighbours[subject], sessions)
        shown.subject[rows] = subject
        shown.intent[rows] = world.item_topic[subject]
        shown.topic[rows] = world.item_topic[subject]
        shown.anchor[rows] = _near(rng, world.item_latent[subject], c.anchor_spread)

    def _ranked(self, candidates: np.ndarray, sessions: np.ndarray) -> np.ndarray:
        """The first `shown` candidates after a little per-visit reshuffling of their ranks."""
        score = -np.log1p(np.arange(candidates.shape[1])) + self.config.shuffle * _gumbel(
            self.rng, candidates.shape
        )
        score = np.where(candidates >= 0, score, -np.inf)
        order = np.argsort(-score, axis=1, kind="stable")[:, : self.width]
        picked = np.take_along_axis(candidates, order, axis=1)
        picked = np.pad(picked, ((0, 0), (0, self.width - picked.shape[1])), constant_values=-1)
        return np.where(self._requested(sessions), picked, -1)

    def _engage(self, idx, shown: _Shown, topics, weights, tastes) -> dict[str, np.ndarray]:
        """Engagement, outcome and timing of every shown slot; updates each user's latest engagement."""
        c, world, rng = self.config, self.world, self.rng
        s = self.sessions
        valid = shown.items >= 0
        item = np.maximum(shown.items, 0)
        position = np.cumsum(valid, axis=1) - 1
        item_topic = world.item_topic[item]
        match = item_topic[:, :, None] == topics[:, None, :]
        weight = (match * weights[:, None, :]).sum(axis=2)
        latent = world.item_latent[item]
        taste_cos = np.where(match, np.einsum("spl,sml->spm", latent, tastes), -np.inf).max(axis=2)
        anchor_cos = np.einsum("spl,sl->sp", latent, shown.anchor)
        on_topic = (item_topic == shown.topic[:, None]) | ~match.any(axis=2)
        similarity = np.where(on_topic, anchor_cos, taste_cos)
        wanted = weight + c.intent_weight * (item_topic == shown.intent[:, None])
        surface = s.surface[idx]
        logit = (
            np.asarray(c.engage_bias)[surface][:, None]
            + c.interest_weight * wanted
            + c.taste_weight * similarity
            + world.item_appeal[item]
            - c.off_interest_penalty * (wanted == 0)
            - c.position_decay * position / s.shown[idx][:, None]
        )
        engaged = valid & (rng.random(logit.shape) < 1 / (1 + np.exp(-logit)))
        outcome = self._outcomes(engaged, item, s.user[idx], surface)
        gap = rng.integers(c.impression_gap_ms[0], c.impression_gap_ms[1] + 1, size=logit.shape)
        reaction = rng.integers(c.reaction_ms[0], c.reaction_ms[1] + 1, size=logit.shape)
        dwell = rng.exponential(c.dwell_mean_ms, size=logit.shape).astype(np.int64)
        spent = valid * (gap + engaged * (reaction + dwell))
        offset = np.cumsum(spent, axis=1) - spent  # an impression comes after everything before it
        self.duration[idx] = spent.sum(axis=1)
        self._remember(idx, engaged, item, offset + reaction)
        rows, cols = np.nonzero(valid)
        return {
            "session": idx[rows],
            "position": position[rows, cols],
            "item": item[rows, cols],
            "weight": weight[rows, cols],
            "impression_ms": offset[rows, cols],
            "engagement_ms": (offset + reaction)[rows, cols],
            "outcome": outcome[rows, cols],
        }

    def _outcomes(self, engaged, item, user, surface) -> np.ndarray:
        """Outcome index per engaged slot, -1 elsewhere: softmax of surface + item + user logits."""
        rows, cols = np.nonzero(engaged)
        logits = (
            self.outcome_bias[surface[rows]]
            + self.world.item_propensity[item[rows, cols]]
            + self.world.user_tendency[user[rows]]
        )
        outcome = np.full(engaged.shape, -1, dtype=np.int64)
        outcome[rows, cols] = np.argmax(logits + _gumbel(self.rng, logits.shape), axis=1)
        return outcome

    def _remember(self, idx, engaged, item, engagement_ms) -> None:
        """Each user's last engaged item, the subject of a later related session."""
        rows = np.flatnonzero(engaged.any(axis=1))
        last = engaged.shape[1] - 1 - np.argmax(engaged[rows, ::-1], axis=1)
        user = self.sessions.user[idx[rows]]
        self.last_item[user] = item[rows, last]
        self.last_ms[user] = self.sessions.start[idx[rows]] + engagement_ms[rows, last]


def _drop_repeats(items: np.ndarray) -> np.ndarray:
    """A feed shows an item once: later copies in a row become -1."""
    order = np.argsort(items, axis=1, kind="stable")
    ordered = np.take_along_axis(items, order, axis=1)
    repeat = np.zeros_like(items, dtype=bool)
    rows = np.arange(len(items))[:, None]
    repeat[rows, order[:, 1:]] = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    return np.where(repeat, -1, items)


def _settle_starts(sessions: Sessions, duration: np.ndarray, gap_ms: int) -> np.ndarray:
    """Start times moved later where a session would begin before the user's previous one (plus a gap)
    ended: t_j = max(s_j, t_{j-1} + d_{j-1} + gap), computed as a per-user running maximum."""
    busy = duration + gap_ms
    before = np.cumsum(busy) - busy
    first = np.flatnonzero(sessions.rank == 0)
    before -= np.repeat(before[first], np.diff(np.append(first, len(busy))))
    # Offsetting each user far above the previous one turns the per-user running max into a global one.
    lift = sessions.user.astype(np.int64) * (4 * int(sessions.start.max() + before.max() + 1))
    running = np.maximum.accumulate(sessions.start - before + lift) - lift
    return running + before


def simulate(
    config: SimulationConfig, vocabulary: Vocabulary = DEFAULT_VOCABULARY, progress: bool = True
) -> EventLog:
    """The synthetic world's event log: impressions and engagements on home, search and related."""
    began = time.perf_counter()
    simulator = _Simulator(config, vocabulary)
    slots = simulator.run(progress)
    frame = _events(config, vocabulary, simulator, slots)
    world = simulator.world
    eventlog = EventLog.from_frame(
        LOG_NAME,
        frame,
        item_ids=np.arange(1, config.items + 1, dtype=np.int64),
        item_features=world.item_features,
        info=_facts(config, vocabulary, simulator, slots, frame),
    )
    log.info(
        "simulated %d events (%d sessions, %d users, %d items) in %.1f s",
        len(frame),
        len(simulator.sessions.user),
        config.users,
        config.items,
        time.perf_counter() - began,
    )
    return eventlog


def _events(config: SimulationConfig, vocabulary: Vocabulary, sim: _Simulator, slots: dict) -> pd.DataFrame:
    """Impression rows for every slot and engagement rows for engaged ones, inside the window."""
    s = sim.sessions
    start = sim.world.begin_ms + _settle_starts(s, sim.duration, config.session_gap_ms)
    engaged = slots["outcome"] >= 0
    session = np.concatenate([slots["session"], slots["session"][engaged]])
    ts = start[session] + np.concatenate([slots["impression_ms"], slots["engagement_ms"][engaged]])
    step = 2 * np.concatenate([slots["position"], slots["position"][engaged]]) + np.repeat(
        [0, 1], [len(engaged), engaged.sum()]
    )
    actions = np.array((sim.roles.impression,) + sim.roles.outcomes, dtype=object)
    action = actions[np.concatenate([np.zeros(len(engaged), dtype=np.int64), slots["outcome"][engaged] + 1])]
    keep = ts <= config.end_ms  # the window cuts the last sessions that run past its end
    session, ts, step, action = session[keep], ts[keep], step[keep], action[keep]
    item = np.concatenate([slots["item"], slots["item"][engaged]])[keep]
    surfaces = np.array(vocabulary.surfaces[:3], dtype=object)
    order = np.lexsort((ts, s.user[session]))
    session, ts, step, action, item = session[order], ts[order], step[order], action[order], item[order]
    session_id = session + 1
    return pd.DataFrame(
        {
            "event_id": _event_ids(config.seed, session_id, step),
            "user_id": s.user[session] + 1,
            "item_id": item + 1,
            "action": action,
            "surface": surfaces[s.surface[session]],
            "ts_ms": ts,
            "query_id": _nullable(sim.query[session]),
            "subject_item_id": _nullable(sim.subject[session] + (sim.subject[session] >= 0)),
            "session_id": session_id,
        }
    )


def _event_ids(seed: int, session_id: np.ndarray, step: np.ndarray) -> list[str]:
    """Deterministic and unique: seed, session and the event's step within the session."""
    return [f"syn{seed}-{a}-{b}" for a, b in zip(session_id.tolist(), step.tolist(), strict=True)]


def _nullable(values: np.ndarray) -> pd.arrays.IntegerArray:
    """-1 marks a missing value."""
    return pd.arrays.IntegerArray(values.astype(np.int64), values < 0)


def _facts(config: SimulationConfig, vocabulary: Vocabulary, sim: _Simulator, slots: dict, frame) -> dict:
    """Ground-truth summaries for reports and tests (JSON-ready); rates count every slot shown, also those
    of sessions the window end cuts short."""
    surface = sim.sessions.surface[slots["session"]]
    engaged = slots["outcome"] >= 0
    names = vocabulary.surfaces[:3]
    outcome_mix = {}
    for code, name in enumerate(names):
        counts = np.bincount(slots["outcome"][engaged & (surface == code)], minlength=len(sim.roles.outcomes))
        shares = (counts / max(counts.sum(), 1)).round(4).tolist()
        outcome_mix[name] = dict(zip(sim.roles.outcomes, shares, strict=True))
    return {
        "generator": "pinrec.model.data.simulate",
        "config": asdict(config),
        "impression_action": sim.roles.impression,
        "outcome_actions": list(sim.roles.outcomes),
        "simulated_surfaces": list(names),
        "events": len(frame),
        "sessions": len(sim.sessions.user),
        "impressions": int((frame["action"] == sim.roles.impression).sum()),
        "engagements": int(positive_mask(frame, vocabulary).sum()),
        "engagement_rate": {
            name: round(float(engaged[surface == code].mean()), 4) if (surface == code).any() else 0.0
            for code, name in enumerate(names)
        },
        "outcome_mix": outcome_mix,
        "interest_weight": {
            "engaged": round(float(slots["weight"][engaged].mean()), 4),
            "not_engaged": round(float(slots["weight"][~engaged].mean()), 4),
        },
        "truth": "build_world(SimulationConfig.from_dict(info['config']), vocabulary) rebuilds the world",
    }
