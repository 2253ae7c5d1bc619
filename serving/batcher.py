"""Concurrent requests answered together: a short queue in front of a few inference threads.

Each thread takes the oldest waiting request and every other one waiting behind it (up to `max_batch`), reads
their histories in one feature-store call and answers them with `Recommender.recommend_many` (one prefill,
decode and index search per group of alike requests). Nothing waits for a batch to fill: an idle server
answers a lone request at once, and a busy one batches what queued up meanwhile, which is where eager
PyTorch's per-operator cost and faiss's per-call cost are shared.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from pinrec.serving.engine import LoadedModel, Recommendation, Recommender
from pinrec.serving.metrics import ServingMetrics
from pinrec.serving.refusals import DeadlineExceeded
from pinrec.serving.request import RecommendRequest

log = logging.getLogger(__name__)


@dataclass
class Job:
    model: LoadedModel  # the call's snapshot
    request: RecommendRequest
    surface: str
    deadline: float  # time.monotonic() after which the caller no longer waits
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(
        self,
        recommender: Recommender,
        metrics: ServingMetrics,
        workers: int,
        max_batch: int,
        on_start=None,  # called in each inference thread before its first job (thread settings)
    ) -> None:
        self.recommender = recommender
        self.metrics = metrics
        self.max_batch = max_batch
        self.queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._run, args=(on_start,), name=f"inference-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, model: LoadedModel, request: RecommendRequest, surface: str, deadline: float) -> Future:
        job = Job(model, request, surface, deadline)
        self.queue.put(job)
        return job.future

    def stop(self) -> None:
        for _ in self.threads:
            self.queue.put(None)

    def _run(self, on_start) -> None:
        if on_start is not None:
            on_start()
        while (first := self.queue.get()) is not None:
            jobs = [first]
            while len(jobs) < self.max_batch:
                try:
                    job = self.queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:  # stop after this batch
                    self.queue.put(None)
                    break
                jobs.append(job)
            self.answer(jobs)

    def answer(self, jobs: list[Job]) -> None:
        """Answers (or fails) every job; a job whose caller gave up or whose deadline passed is dropped."""
        now = time.monotonic()
        live = []
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue  # the caller cancelled it
            if now > job.deadline:
                job.future.set_exception(DeadlineExceeded("the request's deadline passed while it queued"))
                continue
            live.append(job)
        if not live:
            return
        try:
            started = time.perf_counter()
            histories = self.recommender.read_histories([job.request for job in live])
            features_seconds = time.perf_counter() - started
        except Exception as error:  # the feature store failed: every caller gets the error
            self._fail(live, error)
            return
        groups: dict[tuple[int, str], list[int]] = {}
        for row, job in enumerate(live):
            groups.setdefault((id(job.model), job.surface), []).append(row)
        for rows in groups.values():
            group = [live[row] for row in rows]
            try:
                answers = self.recommender.recommend_many(
                    group[0].model,
                    [job.request for job in group],
                    group[0].surface,
                    [histories[row] for row in rows],
                )
            except Exception as error:
                self._fail(group, error)
                continue
            for job, answer in zip(group, answers, strict=True):
                self._answered(job, answer, features_seconds)

    def _answered(self, job: Job, answer: Recommendation, features_seconds: float) -> None:
        self.metrics.answered(job.surface, answer, features_seconds)
        job.future.set_result(answer)

    def _fail(self, jobs: list[Job], error: Exception) -> None:
        log.error("answering %d request(s) failed", len(jobs), exc_info=error)
        for job in jobs:
            self.metrics.failed(job.surface)
            job.future.set_exception(error)
