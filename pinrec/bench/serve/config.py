"""What `pinrec bench serve` measures, and how long."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ServeBenchConfig:
    artifact: Path | None = None  # an existing artifact; default: train one on a synthetic world
    items: int = 1_000_000  # catalog of the synthetic world
    users: int = 2_000
    days: int = 14
    train_minutes: float = 3.0
    history: int = 200  # events per user in the feature store (and the model's max_len)
    steps: int = 6
    k: int = 100  # the budget N
    outcome_budget: dict[str, float] = field(default_factory=lambda: {"save": 0.6, "click": 0.4})
    surface: str = "home"
    rate: float = 20.0  # requests/s of the paced phases
    paced_requests: int = 200
    inprocess_requests: int = 300
    kv_requests: int = 50
    max_rps_seconds: float = 10.0
    max_rps_clients: int = 4
    p99_ms: float = 50.0  # the latency bound of the sustained-rate search
    rate_step_seconds: float = 5.0  # how long each rate of the search is held
    bench_users: int = 200  # users with a stored sequence
    seed: int = 0
