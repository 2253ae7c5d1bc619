"""The sequence store's conditional writes and Redis timeouts against the real Redis and SQLite: a writer
that read a stale version is refused, racing writers lose no event, rows keep Feast's format, and a stopped
Redis makes calls fail within the socket timeout instead of blocking."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from dataclasses import replace

import pytest
import redis
from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _redis_key

from pinrec.featurestore.definitions import USER_ACTIVITY_VIEW
from pinrec.featurestore.schema import UserSequence, Vocabulary
from pinrec.featurestore.store import FeatureStoreSettings, SequenceStore, apply, open_store, repo_config
from pinrec.stream.events import Event
from pinrec.stream.merge import merge_events

from .stream_helpers import applied_store_settings, stored_sequences

pytestmark = pytest.mark.integration

CAP = 200


@pytest.fixture(params=["sqlite", "redis"])
def settings(request, services, unique_name, tmp_path) -> FeatureStoreSettings:
    return applied_store_settings(tmp_path, services, unique_name, request.param)


def events_of(user_id: int, tag: str, count: int) -> list[Event]:
    now_ms = int(time.time() * 1000)
    return [Event(f"{tag}-{i}", user_id, 100 + i, "click", "home", now_ms - i) for i in range(count)]


def merged(stored: UserSequence, events: list[Event]) -> UserSequence:
    sequence, _ = merge_events(stored, events, Vocabulary(), CAP, time.time_ns() // 1000)
    return sequence


def test_a_writer_of_a_stale_version_is_refused_until_it_reads_again(settings):
    first, second = SequenceStore(open_store(settings)), SequenceStore(open_store(settings))
    user = 7
    assert first.read([user]) == second.read([user]) == {}  # both saw no row: expected version 0

    written = merged(UserSequence(user), events_of(user, "first", 3))
    assert first.write_if_unchanged([written], {user: 0}) == []
    late = merged(UserSequence(user), events_of(user, "second", 2))
    assert second.write_if_unchanged([late], {user: 0}) == [user]
    assert second.read([user]) == {user: written}

    current = second.read([user])[user]
    again = merged(current, events_of(user, "second", 2))
    assert second.write_if_unchanged([again], {user: current.version_us}) == []
    assert first.read([user])[user] == again
    assert len(again) == 5
    # Any Feast client reads the conditionally written row too, through get_online_features.
    assert stored_sequences(settings, [user]) == {user: (again.item_ids, again.event_times_ms)}


def test_an_absent_row_is_written_for_expected_0_and_refused_for_any_other(settings):
    store = SequenceStore(open_store(settings))
    absent, present = (
        merged(UserSequence(11), events_of(11, "a", 2)),
        merged(UserSequence(12), events_of(12, "b", 2)),
    )
    store.write([present])

    assert store.write_if_unchanged([absent], {11: 5}) == [11]
    assert store.read([11]) == {}
    # One call, one outcome per user: 12 was read at another version, 11 is absent as expected.
    newer = merged(present, events_of(12, "c", 1))
    assert store.write_if_unchanged([absent, newer], {11: 0, 12: present.version_us - 1}) == [12]
    assert store.read([11, 12]) == {11: absent, 12: present}


def test_a_version_not_newer_than_the_expected_one_is_a_caller_error(settings):
    store = SequenceStore(open_store(settings))
    sequence = merged(UserSequence(13), events_of(13, "a", 1))
    with pytest.raises(ValueError, match="version_us"):
        store.write_if_unchanged([sequence], {13: sequence.version_us})


def test_conditional_rows_are_the_rows_feast_writes(settings, services):
    config = repo_config(settings)
    if settings.online_store == "redis":
        config.online_store.key_ttl_seconds = 3600  # the conditional write keeps Feast's key expiry too
    store = SequenceStore(FeatureStore(config=config))
    plain = merged(UserSequence(21), events_of(21, "a", 4))
    conditional = replace(plain, user_id=22)
    store.write([plain])
    assert store.write_if_unchanged([conditional], {22: 0}) == []

    if settings.online_store == "redis":
        client = redis.Redis.from_url(services.redis_url)
        keys = [_redis_key(config.project, store._key(user), 3) for user in (21, 22)]
        assert client.hgetall(keys[0]) == client.hgetall(keys[1])
        assert all(0 < client.ttl(key) <= 3600 for key in keys)
        client.close()
    else:
        database = sqlite3.connect(settings.repo_dir / "online_store.db")
        rows = [
            database.execute(
                "SELECT feature_name, value, value_text, event_ts, created_ts "
                f'FROM "{config.project}_{USER_ACTIVITY_VIEW}" WHERE entity_key = ? ORDER BY feature_name',
                [serialize_entity_key(store._key(user), entity_key_serialization_version=3)],
            ).fetchall()
            for user in (21, 22)
        ]
        database.close()
        assert rows[0] == rows[1] and len(rows[0]) == 6


def test_racing_writers_of_one_user_lose_no_event(settings):
    user, writers, per_writer = 31, 4, 15
    start = threading.Barrier(writers)
    refused = [0] * writers
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        store = SequenceStore(open_store(settings))  # its own client or connection, like another process
        first_read = True
        try:
            for event in events_of(user, f"w{index}", per_writer):
                while True:
                    stored = store.read([user]).get(user, UserSequence(user))
                    if first_read:  # every writer read the same version: all but one first write is refused
                        start.wait()
                        first_read = False
                    if not store.write_if_unchanged([merged(stored, [event])], {user: stored.version_us}):
                        break
                    refused[index] += 1
        except BaseException as error:
            errors.append(error)
            start.abort()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    final = SequenceStore(open_store(settings)).read([user])[user]
    assert len(final) == writers * per_writer
    assert sum(refused) >= writers - 1


def test_a_stopped_redis_makes_calls_fail_within_the_timeout(private_redis, tmp_path):
    process, url = private_redis
    settings = FeatureStoreSettings(
        repo_dir=tmp_path / "repo",
        online_store="redis",
        redis_url=url,
        redis_socket_timeout_s=1.0,
        redis_connect_timeout_s=1.0,
    )
    store = SequenceStore(apply(settings))
    sequence = merged(UserSequence(41), events_of(41, "a", 2))
    assert store.write_if_unchanged([sequence], {41: 0}) == []

    process.send_signal(signal.SIGSTOP)  # hung: the socket stays open, nothing answers
    for call in (
        lambda: store.read([41]),
        lambda: store.write_if_unchanged(
            [merged(sequence, events_of(41, "b", 1))], {41: sequence.version_us}
        ),
    ):
        started = time.monotonic()
        with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
            call()
        assert time.monotonic() - started < 4  # one retry: two socket timeouts, not redis-py's default ~30 s

    process.send_signal(signal.SIGCONT)
    assert store.read([41]) == {41: sequence}  # the pool reconnects once Redis answers again
