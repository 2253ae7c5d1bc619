"""Typed settings of the model server (`pinrec serve`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pinrec.featurestore.store import FeatureStoreSettings


@dataclass(frozen=True)
class ServeSettings:
    # An artifact directory, or a symlink to one: re-pointing the symlink swaps the model while serving.
    artifacts: Path
    http_port: int = 8080
    grpc_port: int = 8081
    features: FeatureStoreSettings | None = None  # where user sequences are read; None: explicit only
    surfaces: tuple[str, ...] = ()  # KServe model names; empty: every surface of the artifact
    default_k: int = 100
    max_k: int = 1_000
    default_steps: int = 3  # decode steps when a request names none (the paper: 3 unconditioned)
    max_history: int = 1_000  # events in an explicit history (the model reads its newest max_len)
    max_instances: int = 64  # per v1 request
    threads: int = 0  # torch intra-op threads; 0 = one
    faiss_threads: int = 0  # faiss threads per search; 0 = one per available CPU
    workers: int = 0  # inferences that run at once; 0 = one per available CPU
    watch_interval_s: float = 2.0  # how often the artifact path is checked for a new version
    merge_threshold: float = 0.9  # cosine above which two queries merge (method §7)
    overfetch: float = 2.0  # index over-fetch per query

    def validate(self) -> None:
        for name in ("default_k", "max_k", "default_steps", "max_history", "max_instances"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) exceeds max_k ({self.max_k})")
        if not 0 < self.merge_threshold <= 1.01:
            raise ValueError(f"merge_threshold must be in (0, 1.01], got {self.merge_threshold}")
        if self.overfetch < 1:
            raise ValueError(f"overfetch must be at least 1, got {self.overfetch}")
