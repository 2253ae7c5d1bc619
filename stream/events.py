"""The Kafka event contract (architecture §4.1) and its validation at the edge.

A message that fails validation raises InvalidEvent with a short machine-readable code and a message that
names the field; the consumer sends it to the dead-letter topic with both in headers.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from pinrec.featurestore.schema import Vocabulary

INT64_MAX = 2**63 - 1
HOUR_MS = 3_600_000


class InvalidEvent(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class EventLimits:
    """Bounds that keep garbage out of users' sequences."""

    max_bytes: int = 16_384  # a larger message is refused before it is parsed
    max_future_ms: int = 5 * 60_000  # clock skew tolerated for event times ahead of the consumer's clock
    max_age_ms: int = 30 * 24 * HOUR_MS  # older events are refused (replays re-time their events)
    max_event_id_chars: int = 128


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: int
    item_id: int
    action: str
    surface: str
    ts_ms: int
    query_id: int | None = None
    subject_item_id: int | None = None

    def to_json(self) -> bytes:
        body: dict = {
            "v": 1,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "action": self.action,
            "surface": self.surface,
            "ts_ms": self.ts_ms,
        }
        context = {
            name: value
            for name, value in (("query_id", self.query_id), ("subject_item_id", self.subject_item_id))
            if value is not None
        }
        if context:
            body["context"] = context
        return orjson.dumps(body)

    @property
    def key(self) -> bytes:
        return str(self.user_id).encode()


def _id(body: dict, name: str, where: str = "") -> int:
    value = body.get(name)
    field = f"{where}{name}"
    if value is None:
        raise InvalidEvent("missing_field", f"{field} is required")
    if isinstance(value, float) and value.is_integer() and not 0 <= value <= INT64_MAX:
        # orjson reads integers beyond 64 bits as floats
        raise InvalidEvent("out_of_range", f"{field} must be between 0 and 2^63-1, got {value:.0f}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent("wrong_type", f"{field} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= INT64_MAX:
        raise InvalidEvent("out_of_range", f"{field} must be between 0 and 2^63-1, got {value}")
    return value


def _name(body: dict, name: str, allowed: tuple[str, ...]) -> str:
    value = body.get(name)
    if value is None:
        raise InvalidEvent("missing_field", f"{name} is required")
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"{name} must be a string, got {type(value).__name__}")
    if value not in allowed:
        raise InvalidEvent(f"unknown_{name}", f"{name} {value[:40]!r} is not one of {', '.join(allowed)}")
    return value


def parse_event(
    value: bytes | None, key: bytes | None, vocabulary: Vocabulary, limits: EventLimits, now_ms: int
) -> Event:
    """Validate one Kafka message against the contract; unknown fields are ignored."""
    if value is None:
        raise InvalidEvent("empty", "message has no value")
    if len(value) > limits.max_bytes:
        raise InvalidEvent("oversized", f"message is {len(value)} bytes, the limit is {limits.max_bytes}")
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        raise InvalidEvent("malformed_json", f"not UTF-8 JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidEvent("malformed_json", f"expected a JSON object, got {type(body).__name__}")
    if body.get("v", 1) != 1:
        raise InvalidEvent("unsupported_version", f"v must be 1, got {body.get('v')!r}")

    event_id = body.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidEvent(
            "missing_field" if event_id is None else "wrong_type", "event_id must be a non-empty string"
        )
    if len(event_id) > limits.max_event_id_chars:
        raise InvalidEvent("out_of_range", f"event_id is longer than {limits.max_event_id_chars} characters")
    user_id = _id(body, "user_id")
    # A keyless message lands on any partition, so one user would have several writers; refuse it too.
    if key is None:
        raise InvalidEvent("key_mismatch", f"message key is null, not the user_id {user_id}")
    if key != str(user_id).encode():
        raise InvalidEvent("key_mismatch", f"message key {key[:40]!r} is not the user_id {user_id}")
    item_id = _id(body, "item_id")
    action = _name(body, "action", vocabulary.actions)
    surface = _name(body, "surface", vocabulary.surfaces)
    ts_ms = _id(body, "ts_ms")
    if ts_ms > now_ms + limits.max_future_ms:
        raise InvalidEvent(
            "future_timestamp", f"ts_ms {ts_ms} is {(ts_ms - now_ms) / 1000:.0f} s in the future"
        )
    if ts_ms < now_ms - limits.max_age_ms:
        raise InvalidEvent(
            "stale_timestamp", f"ts_ms {ts_ms} is older than {limits.max_age_ms / HOUR_MS:.0f} h"
        )

    context = body.get("context") or {}
    if not isinstance(context, dict):
        raise InvalidEvent("wrong_type", f"context must be an object, got {type(context).__name__}")
    query_id = _id(context, "query_id", "context.") if "query_id" in context else None
    subject = _id(context, "subject_item_id", "context.") if "subject_item_id" in context else None
    return Event(event_id, user_id, item_id, action, surface, ts_ms, query_id, subject)
