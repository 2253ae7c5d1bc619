"""Dead letters: invalid messages copied to `<topic>.dlq` with the reason they were refused, never lost.

Two promises, so that one message can never stop a partition and no letter is dropped:
- A letter is always sendable. Its key and value are the source record's cut to a bound (the event size
  limit), so a 1 MB key cannot exceed the broker's message size; headers keep the original sizes and
  SHA-256 digests. A null key or value becomes empty bytes with `original_*_bytes: null` (Kafka accepts a
  record with neither key nor value; kafka-python refuses to send one).
- Every send is checked. `flush` waits for all letters, sends again those that failed and raises
  DeadLetterFailed while any is undelivered, so the consumer commits nothing past it. The producer's
  blocking is bounded (metadata, request and delivery timeouts): a missing topic fails within seconds, not
  after the client's two-minute default.

Delivery is at least once: a letter is sent again when its batch is redelivered after a failed commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass

from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata
from prometheus_client import Counter

from pinrec.stream.events import InvalidEvent

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 1_000  # reasons are short; the bound keeps a letter's size independent of the input
MAX_BLOCK_MS = 5_000  # send() waits this long for the topic's metadata or buffer space
REQUEST_TIMEOUT_MS = 10_000
DELIVERY_TIMEOUT_MS = 15_000  # send to acknowledgement, retries included (>= request timeout + linger)


class DeadLetterFailed(RuntimeError):
    """Some dead letters are not in the dead-letter topic; the batch must not be committed."""


def _payload(data: bytes | None, max_bytes: int) -> tuple[bytes, bytes, bytes, bool]:
    """(bytes to send, original size header, digest header, cut?) for a source key or value."""
    if data is None:
        return b"", b"null", b"", False
    digest = hashlib.sha256(data).hexdigest().encode()
    return data[:max_bytes], str(len(data)).encode(), digest, len(data) > max_bytes


def _describe(error: Exception) -> str:
    message, name = str(error), type(error).__name__
    return message if message.startswith(name) else f"{name}: {message}"  # kafka-python's carry the name


@dataclass(frozen=True)
class DeadLetter:
    """One refused record as it is written to the dead-letter topic."""

    source: str  # topic[partition]@offset, for log messages
    error_code: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]

    @classmethod
    def of(
        cls,
        partition: TopicPartition,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        error: InvalidEvent,
        max_bytes: int,
    ) -> DeadLetter:
        key_sent, key_size, key_digest, key_cut = _payload(key, max_bytes)
        value_sent, value_size, value_digest, value_cut = _payload(value, max_bytes)
        headers = [
            ("reason", str(error)[:MAX_REASON_CHARS].encode()),
            ("error_code", error.code.encode()),
            ("source_topic", partition.topic.encode()),
            ("source_partition", str(partition.partition).encode()),
            ("source_offset", str(offset).encode()),
            ("original_key_bytes", key_size),
            ("original_value_bytes", value_size),
            ("original_key_sha256", key_digest),
            ("original_value_sha256", value_digest),
        ]
        if key_cut or value_cut:
            headers.append(("truncated", b"true"))
        source = f"{partition.topic}[{partition.partition}]@{offset}"
        return cls(source, error.code, key_sent, value_sent, headers)


@dataclass
class _Delivery:
    letter: DeadLetter
    future: FutureRecordMetadata | None = None  # None: not sent yet, or send() itself failed
    error: Exception | None = None  # why the last attempt failed


class DeadLetters:
    """Sends dead letters to one topic and confirms every one of them in `flush`.

    `max_bytes` bounds the key and the value of a letter each; `delivered` counts confirmed letters,
    labelled with the error code; `client_options` are kafka-python's security settings.
    """

    def __init__(
        self, bootstrap: str, topic: str, max_bytes: int, delivered: Counter, client_options: dict
    ) -> None:
        self.topic = topic
        self.max_bytes = max_bytes
        self.delivered = delivered
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            # kafka-python's idempotent producer turns one refusal by the broker (a message over the topic's
            # max.message.bytes) into a fatal state that fails every later send, so a retry could never
            # succeed; duplicate letters from its own retries are harmless (letters are at least once).
            enable_idempotence=False,
            linger_ms=5,
            max_block_ms=MAX_BLOCK_MS,
            request_timeout_ms=REQUEST_TIMEOUT_MS,
            delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
            **client_options,
        )
        # Keyed by source (topic, partition, offset): a batch rewound before its flush queues nothing twice.
        self._pending: dict[tuple[str, int, int], _Delivery] = {}
        self._stalled = False  # a send blocked and failed; the others wait for the next flush

    def send(self, partition: TopicPartition, record, error: InvalidEvent) -> None:
        """Queue the letter for a refused record (a kafka-python ConsumerRecord)."""
        source = (partition.topic, partition.partition, record.offset)
        if source in self._pending:
            return
        letter = DeadLetter.of(partition, record.offset, record.key, record.value, error, self.max_bytes)
        delivery = self._pending[source] = _Delivery(letter)
        if not self._stalled:
            self._attempt(delivery)
        log.debug("dead-lettered %s: %s", letter.source, error)

    def flush(self) -> None:
        """Wait for every queued letter; raise DeadLetterFailed while any is not in the topic. A later call
        sends the failed ones again."""
        self._stalled = False
        for delivery in self._pending.values():
            if delivery.future is None and not self._stalled:
                self._attempt(delivery)
        # Letters still in flight after the timeout are reported below and waited for again next time.
        with contextlib.suppress(KafkaTimeoutError):
            self.producer.flush(timeout=DELIVERY_TIMEOUT_MS / 1000 + 5)
        undelivered = []
        for source, delivery in list(self._pending.items()):
            future = delivery.future
            if future is not None and future.succeeded():
                del self._pending[source]
                self.delivered.labels(delivery.letter.error_code).inc()
                continue
            if future is not None and future.failed():
                delivery.future, delivery.error = None, future.exception
            elif future is not None:
                delivery.error = KafkaTimeoutError("not acknowledged yet")
            undelivered.append(delivery)
        if undelivered:
            # Letters queued behind a send that failed have no error of their own; name the failure.
            first = next(delivery for delivery in undelivered if delivery.error is not None)
            raise DeadLetterFailed(
                f"{len(undelivered)} dead letters are not in {self.topic}; the first, from "
                f"{first.letter.source}: {_describe(first.error)}"
            )

    def close(self, timeout: float | None = None) -> None:
        self.producer.close(timeout=timeout)

    def _attempt(self, delivery: _Delivery) -> None:
        letter = delivery.letter
        try:
            delivery.future = self.producer.send(
                self.topic, key=letter.key, value=letter.value, headers=letter.headers
            )
        except (KafkaError, ValueError) as error:  # no metadata within max_block_ms, full buffer, bad name
            delivery.future, delivery.error = None, error
            self._stalled = True
