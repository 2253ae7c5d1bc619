"""Reading a process's /metrics endpoint: its samples by name, and sums over series."""

from __future__ import annotations

import requests
from prometheus_client.samples import Sample


def scrape(url: str) -> dict[str, list[Sample]]:
    """The samples of a /metrics endpoint, by sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(requests.get(url, timeout=5).text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def total(samples: list[Sample], **labels: str) -> float:
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))
