"""The consumer's sink on the Feast online store (SQLite or Redis)."""

from __future__ import annotations

from feast import FeatureStore

from pinrec.featurestore.schema import UserSequence
from pinrec.featurestore.store import read_sequences, write_sequences


class FeastSink:
    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def read(self, user_ids: list[int]) -> dict[int, UserSequence]:
        return read_sequences(self.store, user_ids)

    def write(self, sequences: list[UserSequence]) -> None:
        write_sequences(self.store, sequences)
