"""`pinrec bench serve`: prepare the artifact and the stored histories, measure in process, then over the
network against the no-op floor; print the table and write the JSON."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from pinrec.bench.report import write_json
from pinrec.bench.serve.config import ServeBenchConfig
from pinrec.bench.serve.in_process import measure_in_process, measure_index_recall, measure_kv
from pinrec.bench.serve.prepare import build_artifact, store_histories
from pinrec.bench.serve.protocols import measure_against_floor
from pinrec.bench.serve.report import print_serve_table, serve_result

log = logging.getLogger(__name__)


def run_serve_bench(config: ServeBenchConfig, json_path: Path | None) -> dict:
    from pinrec.featurestore.store import FeatureStoreSettings, SequenceStore, open_store
    from pinrec.serving.engine import LoadedModel, Recommender
    from pinrec.serving.server import set_threads
    from pinrec.serving.settings import ServeSettings

    set_threads(1, len(os.sched_getaffinity(0)))  # as the server does
    with tempfile.TemporaryDirectory(prefix="pinrec-bench-serve-") as scratch:
        work = Path(scratch)
        data = None
        if config.artifact is None:
            log.info(
                "training the benchmark artifact (%d items, %.1f min)", config.items, config.train_minutes
            )
            artifact, data = build_artifact(config, work / "artifact")
        else:
            artifact = config.artifact
        set_threads(1, len(os.sched_getaffinity(0)))  # again: training set torch's threads to every CPU
        features = FeatureStoreSettings(repo_dir=work / "repo")
        model = LoadedModel.load(artifact)
        users = store_histories(config, model.artifact.item_ids, data, features)
        settings = ServeSettings(artifact, threads=1)
        recommender = Recommender(settings, model, SequenceStore(open_store(features)))
        stages = measure_in_process(config, recommender, users)
        kv = measure_kv(config, recommender, users)
        recall = measure_index_recall(config, recommender, users)
        served, floor = measure_against_floor(config, artifact, features.repo_dir, users, work)
    result = serve_result(config, model, stages, kv, recall, served, floor)
    write_json(json_path, result)
    print_serve_table(result)
    return result
