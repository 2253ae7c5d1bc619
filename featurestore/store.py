"""Feast store wiring: the repository config (SQLite online store by default, Redis in production),
`pinrec features apply`, and reading and writing user sequences."""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore, RepoConfig
from feast.infra.online_stores.helpers import get_online_store_from_config
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Int64List
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from pinrec.featurestore.definitions import (
    SEQUENCE_FIELDS,
    USER_ACTIVITY_VIEW,
    feature_definitions,
)
from pinrec.featurestore.schema import UserSequence

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class FeatureStoreSettings:
    """Where the Feast repository lives and which online store it uses."""

    repo_dir: Path  # registry, SQLite file and offline snapshots
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str | None = None  # required for the redis online store
    project: str = "pinrec"  # namespace of the keys in the online store

    def validate(self) -> None:
        if self.online_store not in ("sqlite", "redis"):
            raise ValueError(f"online store must be 'sqlite' or 'redis', got {self.online_store!r}")
        if not self.project.replace("_", "").isalnum():
            raise ValueError(f"the Feast project name must be letters, digits and _, got {self.project!r}")
        if self.online_store == "redis" and not self.redis_url:
            raise ValueError("the redis online store needs a Redis URL (PINREC_REDIS_URL or --redis-url)")


def _redis_connection_string(url: str) -> str:
    """redis://[:password@]host:port/db -> Feast's "host:port,db=N[,password=...]"."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ValueError(f"not a Redis URL (redis://host:port/db): {url!r}")
    parts = [f"{parsed.hostname}:{parsed.port or 6379}", f"db={parsed.path.lstrip('/') or 0}"]
    if parsed.password:
        parts.append(f"password={urllib.parse.unquote(parsed.password)}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def repo_config(settings: FeatureStoreSettings) -> RepoConfig:
    repo = settings.repo_dir.resolve()
    if settings.online_store == "redis":
        online = {"type": "redis", "connection_string": _redis_connection_string(settings.redis_url or "")}
    else:
        online = {"type": "sqlite", "path": str(repo / "online_store.db")}
    return RepoConfig(
        project=settings.project,
        provider="local",
        # The consumer and the server only read the registry; refresh it once a minute.
        registry={"path": str(repo / "registry.db"), "cache_ttl_seconds": 60},
        online_store=online,
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=repo,
    )


def offline_snapshot_path(settings: FeatureStoreSettings) -> Path:
    return settings.repo_dir.resolve() / "data" / "user_activity.parquet"


def apply(settings: FeatureStoreSettings) -> FeatureStore:
    """Register the entity, sources and feature view (idempotent) and return the store."""
    settings.repo_dir.mkdir(parents=True, exist_ok=True)
    offline = offline_snapshot_path(settings)
    if not offline.exists():
        offline.parent.mkdir(parents=True, exist_ok=True)
        empty = pa.schema(
            [("user_id", pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC"))]
            + [(name, pa.list_(pa.int64())) for name in SEQUENCE_FIELDS]
            + [("version_us", pa.int64())]
        )
        pq.write_table(empty.empty_table(), offline)
    store = FeatureStore(config=repo_config(settings))
    store.apply(feature_definitions(offline))
    log.info(
        "applied the feature repository in %s (%s online store)", settings.repo_dir, settings.online_store
    )
    return store


def open_store(settings: FeatureStoreSettings) -> FeatureStore:
    """The store, applying the repository first when it has not been applied yet."""
    store = FeatureStore(config=repo_config(settings))
    try:
        store.get_feature_view(USER_ACTIVITY_VIEW)
    except Exception:  # Feast raises several registry errors for a missing or empty registry
        return apply(settings)
    return store


class SequenceStore:
    """Reads and writes user sequences in the online store of a feature store.

    It talks to Feast's OnlineStore interface with protos it builds itself: the same rows that
    `FeatureStore.push` writes and `get_online_features` reads, without the generic per-value conversion
    that makes those the consumer's bottleneck.
    """

    def __init__(self, store: FeatureStore) -> None:
        self.config = store.config
        self.view = store.get_feature_view(USER_ACTIVITY_VIEW)
        self.online = get_online_store_from_config(store.config.online_store)
        self.fields = [*SEQUENCE_FIELDS, "version_us"]

    @staticmethod
    def _key(user_id: int) -> EntityKeyProto:
        return EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(int64_val=user_id)])

    def read(self, user_ids: list[int]) -> dict[int, UserSequence]:
        """The stored sequences of these users; users without one are absent from the result."""
        if not user_ids:
            return {}
        rows = self.online.online_read(self.config, self.view, [self._key(u) for u in user_ids], self.fields)
        found = {}
        for user_id, (_, values) in zip(user_ids, rows, strict=True):
            if not values or "version_us" not in values:
                continue
            found[user_id] = UserSequence(
                user_id=user_id,
                **{name: tuple(values[name].int64_list_val.val) for name in SEQUENCE_FIELDS},
                version_us=values["version_us"].int64_val,
            )
        return found

    def write(self, sequences: list[UserSequence]) -> None:
        """One row per user. A row's timestamp is its version, which callers keep strictly increasing per
        user: the Redis store silently drops a row that is not newer than the stored one."""
        if not sequences:
            return
        rows = []
        for sequence in sequences:
            values = {
                name: ValueProto(int64_list_val=Int64List(val=getattr(sequence, name)))
                for name in SEQUENCE_FIELDS
            }
            values["version_us"] = ValueProto(int64_val=sequence.version_us)
            timestamp = EPOCH + timedelta(microseconds=sequence.version_us)  # exact, unlike a float division
            rows.append((self._key(sequence.user_id), values, timestamp, None))
        self.online.online_write_batch(self.config, self.view, rows, progress=None)
