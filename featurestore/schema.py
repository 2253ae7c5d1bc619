"""Data contracts shared by the stream consumer, the model and the server: the configured vocabularies of
actions and surfaces, the user-sequence feature, and the Parquet event-log schema."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pyarrow as pa

DEFAULT_ACTIONS = ("impression", "click", "save", "long_click", "outbound")
DEFAULT_SURFACES = ("home", "search", "related")

# The Parquet event log (the offline source of truth and the replay input of `pinrec produce`).
EVENT_LOG_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("action", pa.string()),
        ("surface", pa.string()),
        ("ts_ms", pa.int64()),
        ("query_id", pa.int64()),  # nullable: set on search
        ("subject_item_id", pa.int64()),  # nullable: set on related
        ("session_id", pa.int64()),  # nullable: groups one visit of a surface (feed, results, related list)
    ]
)


@dataclass(frozen=True)
class Vocabulary:
    """Configured action and surface names; a name's code is its position (codes are stored in Feast)."""

    actions: tuple[str, ...] = DEFAULT_ACTIONS
    surfaces: tuple[str, ...] = DEFAULT_SURFACES
    # Actions that do not enter a user's activity sequence (they are logged for training only).
    unsequenced_actions: frozenset[str] = field(default_factory=lambda: frozenset({"impression"}))

    def action_code(self, action: str) -> int:
        return self.actions.index(action)

    def surface_code(self, surface: str) -> int:
        return self.surfaces.index(surface)


def event_key(event_id: str) -> int:
    """A signed 64-bit digest of an event id: stored beside each sequence entry to deduplicate by id."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big", signed=True)


@dataclass(frozen=True)
class UserSequence:
    """A user's recent activity, oldest first, as stored in the online store."""

    user_id: int
    item_ids: tuple[int, ...] = ()
    actions: tuple[int, ...] = ()  # action codes
    surfaces: tuple[int, ...] = ()  # surface codes
    event_times_ms: tuple[int, ...] = ()
    event_keys: tuple[int, ...] = ()  # event_key(event_id) of each entry, for idempotent merges
    version_us: int = 0  # write timestamp of the stored row; every write of a user is strictly newer

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def last_event_ms(self) -> int | None:
        return self.event_times_ms[-1] if self.event_times_ms else None
