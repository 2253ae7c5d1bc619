"""Validation of Kafka messages against the event contract: every kind of bad input gets a reason."""

from __future__ import annotations

import json

import pytest

from pinrec.featurestore.schema import Vocabulary
from pinrec.settings import Settings
from pinrec.stream.events import Event, EventLimits, InvalidEvent, parse_event

NOW_MS = 1_800_000_000_000
VOCABULARY = Vocabulary()
LIMITS = EventLimits()
GOOD = {
    "v": 1,
    "event_id": "e1",
    "user_id": 7,
    "item_id": 3,
    "action": "save",
    "surface": "home",
    "ts_ms": NOW_MS,
}


def parse(body, key: bytes | None = b"7") -> Event:
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_event(value, key, VOCABULARY, LIMITS, NOW_MS)


def test_a_valid_event_round_trips_and_ignores_unknown_fields():
    event = parse({**GOOD, "context": {"query_id": 5}, "client": "ios"})
    assert event == Event("e1", 7, 3, "save", "home", NOW_MS, query_id=5)
    assert parse(event.to_json()) == event


def test_configured_vocabularies_replace_the_defaults():
    vocabulary = Settings.from_env({"PINREC_ACTIONS": "view,buy", "PINREC_SURFACES": "shop"}).vocabulary
    event = parse_event(
        json.dumps({**GOOD, "action": "buy", "surface": "shop"}).encode(), b"7", vocabulary, LIMITS, NOW_MS
    )
    assert (vocabulary.action_code(event.action), vocabulary.surface_code(event.surface)) == (1, 0)
    with pytest.raises(InvalidEvent, match="action 'save' is not one of view, buy"):
        parse_event(json.dumps(GOOD).encode(), b"7", vocabulary, LIMITS, NOW_MS)


@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        (b"{not json", "malformed_json", "JSON"),
        (b"\xff\xfe", "malformed_json", "UTF-8"),
        (b"[1, 2]", "malformed_json", "object"),
        ({**GOOD, "v": 2}, "unsupported_version", "v"),
        ({k: v for k, v in GOOD.items() if k != "event_id"}, "missing_field", "event_id"),
        ({**GOOD, "event_id": 5}, "wrong_type", "event_id"),
        ({**GOOD, "event_id": "x" * 200}, "out_of_range", "event_id"),
        ({k: v for k, v in GOOD.items() if k != "user_id"}, "missing_field", "user_id"),
        ({**GOOD, "user_id": "7"}, "wrong_type", "user_id"),
        ({**GOOD, "user_id": True}, "wrong_type", "user_id"),
        ({**GOOD, "user_id": 7.5}, "wrong_type", "user_id"),
        ({**GOOD, "item_id": -3}, "out_of_range", "item_id"),
        ({**GOOD, "item_id": 2**64}, "out_of_range", "item_id"),
        ({**GOOD, "action": "teleport"}, "unknown_action", "action"),
        ({**GOOD, "action": None}, "missing_field", "action"),
        ({**GOOD, "surface": "moon"}, "unknown_surface", "surface"),
        ({**GOOD, "surface": 1}, "wrong_type", "surface"),
        ({**GOOD, "ts_ms": NOW_MS + 3_600_000}, "future_timestamp", "ts_ms"),
        ({**GOOD, "ts_ms": NOW_MS - 400 * 86_400_000}, "stale_timestamp", "ts_ms"),
        ({**GOOD, "ts_ms": "yesterday"}, "wrong_type", "ts_ms"),
        ({**GOOD, "context": [1]}, "wrong_type", "context"),
        ({**GOOD, "context": {"subject_item_id": -1}}, "out_of_range", "context.subject_item_id"),
        ({**GOOD, "padding": "x" * 20_000}, "oversized", "bytes"),
    ],
)
def test_bad_messages_are_refused_with_a_reason_naming_the_field(body, code, names):
    with pytest.raises(InvalidEvent, match=names) as refused:
        parse(body)
    assert refused.value.code == code


def test_a_key_that_is_not_the_user_id_is_refused():
    with pytest.raises(InvalidEvent, match="not the user_id") as refused:
        parse(GOOD, key=b"8")
    assert refused.value.code == "key_mismatch"


def test_a_message_without_key_is_refused_as_a_key_mismatch():
    # Keyless messages spread one user over several partitions, hence several writers of one sequence.
    with pytest.raises(InvalidEvent, match="key is null, not the user_id 7") as refused:
        parse(GOOD, key=None)
    assert refused.value.code == "key_mismatch"


def test_an_empty_key_is_refused_as_a_key_mismatch():
    with pytest.raises(InvalidEvent, match="key b'' is not the user_id 7") as refused:
        parse(GOOD, key=b"")
    assert refused.value.code == "key_mismatch"


def test_a_message_without_value_is_refused():
    with pytest.raises(InvalidEvent) as refused:
        parse_event(None, b"7", VOCABULARY, LIMITS, NOW_MS)
    assert refused.value.code == "empty"
