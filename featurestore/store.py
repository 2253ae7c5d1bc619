"""Feast store wiring: the repository config (SQLite online store by default, Redis in production),
`pinrec features apply`, and reading and writing user sequences."""

from __future__ import annotations

import logging
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
import redis
from feast import FeatureStore, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import (
    _mmh3,
    _redis_key,
    compute_table_id,
    compute_versioned_name,
    get_online_store_from_config,
)
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Int64List
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.timestamp_pb2 import Timestamp
from redis.backoff import NoBackoff
from redis.retry import Retry

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
    # A Redis command waiting longer than this fails (a hung or stopped server) instead of blocking forever.
    redis_socket_timeout_s: float = 5.0
    redis_connect_timeout_s: float = 5.0  # opening a connection to Redis
    redis_keepalive: bool = True  # TCP keepalive on Redis connections: idle connections to a dead peer die

    def validate(self) -> None:
        if self.online_store not in ("sqlite", "redis"):
            raise ValueError(f"online store must be 'sqlite' or 'redis', got {self.online_store!r}")
        if not self.project.replace("_", "").isalnum():
            raise ValueError(f"the Feast project name must be letters, digits and _, got {self.project!r}")
        if self.online_store == "redis" and not self.redis_url:
            raise ValueError("the redis online store needs a Redis URL (PINREC_REDIS_URL or --redis-url)")
        for name in ("redis_socket_timeout_s", "redis_connect_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {getattr(self, name)!r}")


def _redis_connection_string(settings: FeatureStoreSettings) -> str:
    """redis://[:password@]host:port/db -> Feast's "host:port,db=N[,password=...],socket_timeout=...".

    Feast passes every `name=value` (JSON-decoded) to `redis.Redis`, so the timeouts reach all Feast clients
    built from this config, the server's and the tests' `get_online_features` included."""
    url = settings.redis_url or ""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ValueError(f"not a Redis URL (redis://host:port/db): {url!r}")
    parts = [f"{parsed.hostname}:{parsed.port or 6379}", f"db={parsed.path.lstrip('/') or 0}"]
    if parsed.password:
        parts.append(f"password={urllib.parse.unquote(parsed.password)}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    parts += [
        f"socket_timeout={settings.redis_socket_timeout_s}",
        f"socket_connect_timeout={settings.redis_connect_timeout_s}",
        f"socket_keepalive={'true' if settings.redis_keepalive else 'false'}",
    ]
    return ",".join(parts)


def repo_config(settings: FeatureStoreSettings) -> RepoConfig:
    repo = settings.repo_dir.resolve()
    if settings.online_store == "redis":
        online = {"type": "redis", "connection_string": _redis_connection_string(settings)}
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


# Keepalive probes after 30 s of idleness, every 10 s, 3 unanswered ones drop the connection: a pooled
# connection to a vanished host dies within a minute instead of the kernel's default two hours.
_KEEPALIVE_OPTIONS = {socket.TCP_KEEPIDLE: 30, socket.TCP_KEEPINTVL: 10, socket.TCP_KEEPCNT: 3}

# KEYS[1]: the user's hash. ARGV: the version_us field, the version the writer expects ("" = no row), the key
# TTL in seconds (0 = none), then field, value, field, value... exactly as Feast's online_write_batch writes.
_CHECK_AND_SET = """
local stored = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if stored ~= ARGV[2] then
    return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
if tonumber(ARGV[3]) > 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
"""


def _redis_client(config: RedisOnlineStoreConfig) -> redis.Redis:
    """The client Feast would build from the connection string (same host, port, db, password, timeouts),
    plus what a connection string cannot carry: keepalive timings, and one immediate retry instead of
    redis-py's default three with up to 10 s backoff, so a hung Redis fails within two socket timeouts (the
    consumer backs off itself). The retry reconnects a pooled connection that a Redis restart dropped."""
    nodes, params = RedisOnlineStore._parse_connection_string(config.connection_string)
    if params.get("socket_keepalive"):
        params["socket_keepalive_options"] = _KEEPALIVE_OPTIONS
    return redis.Redis(
        host=nodes[0]["host"], port=int(nodes[0]["port"]), retry=Retry(NoBackoff(), retries=1), **params
    )


class SequenceStore:
    """Reads and writes user sequences in the online store of a feature store.

    It talks to Feast's OnlineStore interface with protos it builds itself: the same rows that
    `FeatureStore.push` writes and `get_online_features` reads, without the generic per-value conversion
    that makes those the consumer's bottleneck. `write_if_unchanged` adds what Feast lacks, a per-user
    compare-and-set on the stored version, for writers that may race on one user.
    """

    def __init__(self, store: FeatureStore) -> None:
        self.config = store.config
        self.view = store.get_feature_view(USER_ACTIVITY_VIEW)
        self.online = get_online_store_from_config(store.config.online_store)
        self.fields = [*SEQUENCE_FIELDS, "version_us"]
        self._redis: redis.Redis | None = None
        if isinstance(self.config.online_store, RedisOnlineStoreConfig):
            self._redis = _redis_client(self.config.online_store)
            # Feast's RedisOnlineStore uses the client it finds here: its reads get our timeouts and retries.
            self.online._client = self._redis
            self._check_and_set = self._redis.register_script(_CHECK_AND_SET)

    @staticmethod
    def _key(user_id: int) -> EntityKeyProto:
        return EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(int64_val=user_id)])

    def _row(self, sequence: UserSequence) -> tuple[EntityKeyProto, dict[str, ValueProto], datetime, None]:
        """A sequence as the row Feast writes: (entity key, feature values, event timestamp, created)."""
        values = {
            name: ValueProto(int64_list_val=Int64List(val=getattr(sequence, name)))
            for name in SEQUENCE_FIELDS
        }
        values["version_us"] = ValueProto(int64_val=sequence.version_us)
        timestamp = EPOCH + timedelta(microseconds=sequence.version_us)  # exact, unlike a float division
        return self._key(sequence.user_id), values, timestamp, None

    def read(self, user_ids: list[int]) -> dict[int, UserSequence]:
        """The stored sequences of these users; users without one are absent from the result."""
        if not user_ids:
            return {}
        rows = self.online.online_read(self.config, self.view, [self._key(u) for u in user_ids], self.fields)
        found = {}
        for user_id, (_, values) in zip(user_ids, rows, strict=True):
            # Feast's Redis store answers a missing hash with empty values rather than no row.
            if not values or "version_us" not in values or not values["version_us"].HasField("int64_val"):
                continue
            found[user_id] = UserSequence(
                user_id=user_id,
                **{name: tuple(values[name].int64_list_val.val) for name in SEQUENCE_FIELDS},
                version_us=values["version_us"].int64_val,
            )
        return found

    def write(self, sequences: list[UserSequence]) -> None:
        """One row per user, overwriting whatever is stored: for a user's only writer. A row's timestamp is
        its version, which callers keep strictly increasing per user: the Redis store silently drops a row
        that is not newer than the stored one."""
        if sequences:
            self.online.online_write_batch(self.config, self.view, [self._row(s) for s in sequences], None)

    def write_if_unchanged(self, sequences: list[UserSequence], expected: Mapping[int, int]) -> list[int]:
        """Write each user's row only if the stored version is still `expected[user_id]` (0: no row), each
        user atomically against every other writer; return the users whose write was refused, for the
        caller to read again, merge and retry. One sequence per user, newer than the version it replaces."""
        for sequence in sequences:
            if sequence.version_us <= expected[sequence.user_id]:
                raise ValueError(
                    f"user {sequence.user_id}: version_us {sequence.version_us} must be newer than the "
                    f"expected stored version {expected[sequence.user_id]}"
                )
        if not sequences:
            return []
        if self._redis is not None:
            return self._check_and_set_redis(sequences, expected)
        return self._check_and_set_sqlite(sequences, expected)

    def _check_and_set_redis(self, sequences: list[UserSequence], expected: Mapping[int, int]) -> list[int]:
        """One Lua script per user (Redis runs each atomically), all in one pipelined round trip. The hash
        layout is Feast's: key = entity key + project, a `_ts:<view>` field, features under murmur3 names."""
        view = compute_versioned_name(self.view, self.config.registry.enable_online_feature_view_versioning)
        version_field = _mmh3(f"{view}:version_us")
        ttl = self.config.online_store.key_ttl_seconds or 0
        with self._redis.pipeline(transaction=False) as pipe:
            for sequence in sequences:
                entity_key, values, timestamp, _ = self._row(sequence)
                ts = Timestamp()
                ts.FromDatetime(timestamp)
                fields = [f"_ts:{view}".encode(), ts.SerializeToString()]
                for name, value in values.items():
                    fields += [_mmh3(f"{view}:{name}"), value.SerializeToString()]
                version = expected[sequence.user_id]
                self._check_and_set(
                    keys=[
                        _redis_key(
                            self.config.project, entity_key, self.config.entity_key_serialization_version
                        )
                    ],
                    args=[
                        version_field,
                        ValueProto(int64_val=version).SerializeToString() if version else b"",
                        ttl,
                        *fields,
                    ],
                    client=pipe,
                )
            written = pipe.execute()
        return [s.user_id for s, ok in zip(sequences, written, strict=True) if not ok]

    def _check_and_set_sqlite(self, sequences: list[UserSequence], expected: Mapping[int, int]) -> list[int]:
        """Check the stored versions and upsert the rest in one BEGIN IMMEDIATE transaction on Feast's own
        connection: it takes the database's write lock first, so no other writer (another connection or
        process) commits between the check and the upsert. Feast's online_write_batch writes the rows (the
        same format its reads expect) inside that transaction, and its `with conn:` commits it."""
        conn = self.online._get_conn(self.config)
        table = compute_table_id(
            self.config.project, self.view, self.config.registry.enable_online_feature_view_versioning
        )
        keys = {
            serialize_entity_key(
                self._key(s.user_id),
                entity_key_serialization_version=self.config.entity_key_serialization_version,
            ): s.user_id
            for s in sequences
        }
        conn.execute("BEGIN IMMEDIATE")
        try:
            stored = {}
            key_list = list(keys)
            for start in range(0, len(key_list), 500):  # under SQLite's limit on bound parameters
                chunk = key_list[start : start + 500]
                rows = conn.execute(
                    f"SELECT entity_key, value FROM \"{table}\" WHERE feature_name = 'version_us' "
                    f"AND entity_key IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                for key, value in rows:
                    stored[keys[key]] = ValueProto.FromString(value).int64_val
            refused = [s.user_id for s in sequences if stored.get(s.user_id, 0) != expected[s.user_id]]
            accepted = [self._row(s) for s in sequences if stored.get(s.user_id, 0) == expected[s.user_id]]
            if accepted:
                self.online.online_write_batch(self.config, self.view, accepted, None)
        except BaseException:
            conn.rollback()
            raise
        if conn.in_transaction:  # nothing written: end the transaction that holds the lock
            conn.commit()
        return refused
