"""One KServe model per surface; all of them share one Recommender (one backbone and index in memory).

Handlers are async: parsing runs on the event loop (cheap), the feature read, torch and faiss run on a
bounded thread pool so that the loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from pinrec.serving import metrics
from pinrec.serving.engine import Recommendation, Recommender
from pinrec.serving.request import RecommendRequest, parse_v1, parse_v2

log = logging.getLogger(__name__)


class SurfaceModel(Model):
    def __init__(self, surface: str, recommender: Recommender, executor: Executor) -> None:
        super().__init__(surface)
        self.surface = surface
        self.recommender = recommender
        self.executor = executor
        self.ready = True

    def load(self) -> bool:
        self.ready = True
        return self.ready

    async def predict(self, payload, headers=None, response_headers=None):
        now_ms = int(time.time() * 1000)
        try:
            limits = self.recommender.limits()
            if isinstance(payload, InferRequest):
                requests = [parse_v2(payload, self.surface, limits, now_ms)]
            elif isinstance(payload, dict):
                requests = parse_v1(payload, self.surface, limits, now_ms)
            else:
                raise InvalidInput("the request body must be a JSON object")
        except InvalidInput:
            metrics.REQUESTS.labels(self.surface, "invalid").inc()
            raise
        try:
            answers = await asyncio.get_running_loop().run_in_executor(self.executor, self.answer, requests)
        except Exception:
            metrics.REQUESTS.labels(self.surface, "error").inc()
            log.exception("request on %s failed", self.surface)
            raise
        if isinstance(payload, InferRequest):
            return _v2_response(self.name, payload, answers[0])
        return {"predictions": [answer.to_dict() for answer in answers]}

    def answer(self, requests: list[RecommendRequest]) -> list[Recommendation]:
        """Runs on the thread pool: one feature-store read for the batch, then one answer per request."""
        started = time.perf_counter()
        histories = self.recommender.read_histories(requests)
        features_seconds = (time.perf_counter() - started) / len(requests)
        answers = []
        for request, history in zip(requests, histories, strict=True):
            answer = self.recommender.recommend(request, self.surface, history)
            metrics.observe(self.surface, answer, features_seconds)
            answers.append(answer)
        return answers


def _output(name: str, datatype: str, values: list) -> InferOutput:
    return InferOutput(name=name, shape=[len(values)], datatype=datatype, data=values)


def _v2_response(model_name: str, request: InferRequest, answer: Recommendation) -> InferResponse:
    outputs = [
        _output("item_id", "INT64", answer.item_ids.astype(np.int64).tolist()),
        _output("score", "FP32", answer.scores.astype(np.float32).tolist()),
        _output("outcome", "BYTES", list(answer.outcomes)),
        _output("step", "INT32", answer.steps.astype(np.int32).tolist()),
        _output("cold_start", "BOOL", [answer.cold_start]),
        _output("context_used", "BOOL", [answer.context_used]),
        _output("model_version", "BYTES", [answer.model_version]),
    ]
    return InferResponse(
        response_id=request.id or "",
        model_name=model_name,
        model_version=answer.model_version,
        infer_outputs=outputs,
        from_grpc=request.from_grpc,
    )
