"""`pinrec produce`: send events to a topic, keyed by user, at a given rate."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass

from kafka import KafkaProducer
from tqdm import tqdm

from pinrec.stream.events import Event
from pinrec.stream.security import PLAINTEXT, KafkaSecurity


@dataclass(frozen=True)
class ProduceReport:
    events: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def produce(
    bootstrap: str,
    topic: str,
    events: Iterable[Event],
    *,
    rate: float | None = None,
    stamp_now: bool = True,
    total: int | None = None,
    progress: bool = True,
    security: KafkaSecurity = PLAINTEXT,
) -> ProduceReport:
    """Send every event (keyed by user id) and flush. rate: events per second, paced evenly (None: as fast
    as possible). stamp_now: set each event's ts_ms to its send time, as a live client would."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
        enable_idempotence=True,
        **security.client_options(),
    )
    started = time.monotonic()
    sent = 0
    try:
        for event in tqdm(
            events, total=total, desc=f"produce {topic}", unit="ev", disable=not progress, mininterval=1
        ):
            if rate:
                ahead = started + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            if stamp_now:
                event = dataclasses.replace(event, ts_ms=int(time.time() * 1000))
            producer.send(topic, key=event.key, value=event.to_json())
            sent += 1
        producer.flush()
    finally:
        producer.close()
    return ProduceReport(sent, time.monotonic() - started)
