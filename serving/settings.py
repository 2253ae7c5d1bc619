"""Typed settings of the model server (`pinrec serve`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pinrec.featurestore.store import FeatureStoreSettings


@dataclass(frozen=True)
class ServeSettings:
    # An artifact directory, or a symlink to one: re-pointing the symlink swaps the model while serving.
    artifacts: Path
    host: str = "127.0.0.1"  # the interface REST, gRPC and the metrics port listen on ("0.0.0.0": all)
    http_port: int = 8080
    grpc_port: int = 8081
    metrics_port: int = 0  # a port with only /metrics (for a narrow network policy); 0: none
    features: FeatureStoreSettings | None = None  # where user sequences are read; None: explicit only
    surfaces: tuple[str, ...] = ()  # KServe model names; empty: every surface of the artifact
    default_k: int = 100
    max_k: int = 1_000
    default_steps: int = 3  # decode steps when a request names none (the paper: 3 unconditioned)
    max_history: int = 1_000  # events in an explicit history (the model reads its newest max_len)
    max_instances: int = 64  # per v1 request
    # The work one call may ask for, summed over its instances: generated queries (steps x outcomes; each
    # is a decode row and an index search) and items returned (k).
    max_request_queries: int = 256
    max_request_items: int = 10_000
    max_request_bytes: int = 4 * 1024 * 1024  # REST body (413 above) and gRPC message size
    request_timeout_ms: int = 10_000  # a call still unanswered after this gets 504 / DEADLINE_EXCEEDED
    threads: int = 0  # torch intra-op threads; 0 = one
    faiss_threads: int = 0  # faiss threads per search; 0 = one per available CPU
    workers: int = 0  # inference threads (each answers a batch at a time); 0 = one per available CPU
    max_batch: int = 16  # requests an inference thread answers at once (those queued when it takes work)
    watch_interval_s: float = 2.0  # how often the artifact path is checked for a new version
    merge_threshold: float = 0.9  # cosine above which two queries merge (method §7)
    overfetch: float = 2.0  # index over-fetch per query

    def validate(self) -> None:
        for name in (
            "default_k",
            "max_k",
            "default_steps",
            "max_history",
            "max_instances",
            "max_batch",
            "max_request_queries",
            "max_request_items",
            "max_request_bytes",
            "request_timeout_ms",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) exceeds max_k ({self.max_k})")
        if not 0 < self.merge_threshold <= 1.01:
            raise ValueError(f"merge_threshold must be in (0, 1.01], got {self.merge_threshold}")
        if self.overfetch < 1:
            raise ValueError(f"overfetch must be at least 1, got {self.overfetch}")
