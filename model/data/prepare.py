"""Data preparation: an event log becomes the item catalog and every user's positive actions, the two things
training, evaluation and the artifact read."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pinrec.featurestore.schema import Vocabulary
from pinrec.model.data.eventlog import EventLog, positive_mask
from pinrec.model.data.sequences import (
    Histories,
    ItemCatalog,
    build_histories,
    build_item_catalog,
)

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    log: EventLog
    vocabulary: Vocabulary
    catalog: ItemCatalog
    histories: Histories

    @property
    def primary_outcome(self) -> int:
        """The most frequent positive action: the outcome a single next-item query asks for."""
        return int(np.bincount(self.histories.actions, minlength=len(self.vocabulary.actions)).argmax())

    def outcome_mix(self) -> tuple[list[int], list[float]]:
        """The positive outcomes present and their shares: the default outcome budget of a request."""
        counts = np.bincount(self.histories.actions, minlength=len(self.vocabulary.actions))
        outcomes = [int(code) for code in np.flatnonzero(counts)]
        return outcomes, [float(counts[o] / counts.sum()) for o in outcomes]

    def outcome_shares(self) -> dict[str, float]:
        """The outcome mix by action name: what an artifact's manifest keeps as a request's default budget."""
        outcomes, shares = self.outcome_mix()
        return {self.vocabulary.actions[o]: share for o, share in zip(outcomes, shares, strict=True)}

    @property
    def primary_surface(self) -> int:
        return int(np.bincount(self.histories.surfaces, minlength=len(self.vocabulary.surfaces)).argmax())


def prepare(event_log: EventLog, vocabulary: Vocabulary, item_ids: np.ndarray | None = None) -> PreparedData:
    """item_ids: the catalog of an existing artifact (its item indices must not move); items of the log that
    it lacks are dropped."""
    positives = positive_mask(event_log.events, vocabulary)
    catalog = build_item_catalog(event_log, positives, item_ids)
    histories = build_histories(event_log, catalog, vocabulary, positives)
    log.info(
        "%s: %d positive actions of %d users over %d items",
        event_log.name,
        len(histories.items),
        len(histories.user_ids),
        catalog.size,
    )
    return PreparedData(event_log, vocabulary, catalog, histories)
