"""`pinrec serve`: a kserve.ModelServer with one model per surface, one shared Recommender, and a watcher
that swaps in a new artifact when the artifact path (a symlink, typically) points somewhere new."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import faiss
import numpy as np
import torch
from prometheus_client import REGISTRY, start_http_server

from pinrec.serving.engine import LoadedModel, Recommender
from pinrec.serving.metrics import ServingMetrics
from pinrec.serving.request import RawHistory, RecommendRequest
from pinrec.serving.settings import ServeSettings

log = logging.getLogger(__name__)


def warm_up(model: LoadedModel, recommender: Recommender) -> None:
    """One request through the whole path, so that the first user does not pay for lazy initialisation."""
    outcomes = model.outcomes[:1]
    request = RecommendRequest(None, None, 10, outcomes, (1.0,), 2, None, None, None)
    popular = model.artifact.item_ids[model.popular[:5] - 1]
    history = RawHistory(
        popular,
        np.full(len(popular), model.vocabulary.action_code(outcomes[0])),
        np.zeros(len(popular), dtype=np.int64),
        np.arange(len(popular), dtype=np.int64) * 1000,
    )
    recommender.recommend(model, request, model.vocabulary.surfaces[0], history)


def check_compatible(old: LoadedModel, new: LoadedModel) -> None:
    """A new artifact must speak the same vocabularies (codes are stored in the feature store)."""
    for name in ("actions", "surfaces"):
        if getattr(old.vocabulary, name) != getattr(new.vocabulary, name):
            raise ValueError(
                f"{new.artifact.path}: its {name} {getattr(new.vocabulary, name)} differ from the served "
                f"artifact's {getattr(old.vocabulary, name)}; restart the server to change vocabularies"
            )


class ArtifactWatcher(threading.Thread):
    """Polls the artifact path; a new target is loaded, warmed up and swapped in atomically."""

    def __init__(
        self, path: Path, recommender: Recommender, interval_s: float, metrics: ServingMetrics
    ) -> None:
        super().__init__(name="artifact-watcher", daemon=True)
        self.path, self.recommender, self.interval_s = path, recommender, interval_s
        self.metrics = metrics
        self.stopped = threading.Event()
        self.loaded = os.path.realpath(path)
        self.failed: str | None = None

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.check()

    def check(self) -> bool:
        target = os.path.realpath(self.path)
        if target in (self.loaded, self.failed):
            return False
        try:
            model = LoadedModel.load(Path(target))
            check_compatible(self.recommender.current, model)
            warm_up(model, self.recommender)
        except Exception as error:  # a broken artifact never replaces a working one
            log.error("not swapping to %s: %s", target, error)
            self.failed = target
            return False
        self.recommender.swap(model)
        self.loaded, self.failed = target, None
        self.metrics.swapped(model.version)
        log.info("now serving %s (version %s)", target, model.version)
        return True


def set_threads(torch_threads: int, faiss_threads: int) -> None:
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


def build(settings: ServeSettings, metrics: ServingMetrics) -> tuple[Recommender, list]:
    """The recommender and one KServe model per surface (everything but the network servers)."""
    from pinrec.serving.batcher import Batcher
    from pinrec.serving.predictor import SurfaceModel

    settings.validate()
    # Small per-token matrices gain nothing from intra-op threads; faiss splits a request's queries over
    # the CPUs. Concurrency comes from the inference pool (one request per CPU at once).
    cpus = len(os.sched_getaffinity(0))
    set_threads(settings.threads or 1, settings.faiss_threads or cpus)
    model = LoadedModel.load(Path(os.path.realpath(settings.artifacts)))
    sequences = None
    if settings.features is not None:
        from pinrec.featurestore.store import SequenceStore, open_store

        sequences = SequenceStore(open_store(settings.features))
    recommender = Recommender(settings, model, sequences)
    warm_up(model, recommender)
    metrics.serving(model.version)
    surfaces = settings.surfaces or model.vocabulary.surfaces
    unknown = [s for s in surfaces if s not in model.vocabulary.surfaces]
    if unknown:
        raise ValueError(
            f"unknown surface(s) {', '.join(unknown)}; "
            f"the artifact has {', '.join(model.vocabulary.surfaces)}"
        )
    batcher = Batcher(
        recommender,
        metrics,
        workers=settings.workers or cpus,
        max_batch=settings.max_batch,
        # OpenMP thread counts are per calling thread: set them in every inference thread, not only here.
        on_start=lambda: set_threads(settings.threads or 1, settings.faiss_threads or cpus),
    )
    return recommender, [SurfaceModel(surface, recommender, batcher) for surface in surfaces]


def serve(settings: ServeSettings, metrics: ServingMetrics | None = None) -> None:
    """Runs until the server stops. Metrics go on prometheus_client's default registry unless given: that
    is the one KServe's /metrics exposes (and the metrics port, when there is one)."""
    from pinrec.serving.model_server import GuardedModelServer

    metrics = metrics or ServingMetrics(REGISTRY)
    recommender, models = build(settings, metrics)
    watcher = ArtifactWatcher(settings.artifacts, recommender, settings.watch_interval_s, metrics)
    watcher.start()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host, registry=metrics.registry)
    log.info(
        "serving %s (%s) on %s: http :%d, grpc :%d%s",
        ", ".join(m.name for m in models),
        recommender.current.version,
        settings.host,
        settings.http_port,
        settings.grpc_port,
        f", metrics :{settings.metrics_port}" if settings.metrics_port else "",
    )
    GuardedModelServer(settings, metrics).start(models)
    watcher.stopped.set()
