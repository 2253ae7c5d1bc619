"""One KServe model per surface; all of them share one Recommender (one backbone and index in memory).

KServe calls `preprocess` (take the model snapshot, parse and validate against it), `predict` (the answers)
and `postprocess` (the protocol's response) in turn. Handlers are async: parsing runs on the event loop
(cheap); the feature read, torch and faiss run on the batcher's inference threads, which answer concurrent
requests together, so that the loop keeps accepting requests. A call's deadline starts when it is parsed:
past it the caller gets 504 / DEADLINE_EXCEEDED, and its instances still queued are dropped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from pinrec.serving.batcher import Batcher
from pinrec.serving.engine import LoadedModel, Recommendation, Recommender
from pinrec.serving.refusals import DeadlineExceeded
from pinrec.serving.request import RecommendRequest, parse_v1, parse_v2


@dataclass(frozen=True)
class ParsedRequest:
    """One call (a v1 body of instances, or one v2 request), validated against the model that answers it."""

    model: LoadedModel  # the snapshot: limits, parsing and inference all use it, whatever swaps meanwhile
    requests: list[RecommendRequest]
    v2: InferRequest | None  # the v2 request (REST or gRPC), answered with tensors; None: a v1 body
    deadline: float  # time.monotonic() after which the call is abandoned


@dataclass(frozen=True)
class Answered:
    parsed: ParsedRequest
    answers: list[Recommendation]  # one per request, in order


class SurfaceModel(Model):
    def __init__(self, surface: str, recommender: Recommender, batcher: Batcher) -> None:
        super().__init__(surface)
        self.surface = surface
        self.recommender = recommender
        self.batcher = batcher
        self.ready = True

    def load(self) -> bool:
        self.ready = True
        return self.ready

    async def preprocess(self, payload, headers=None) -> ParsedRequest:
        """Refusals raise InvalidInput; the REST handlers and the gRPC interceptor count and log them."""
        model = self.recommender.current  # once per call: a swap from here on cannot split it
        now_ms = int(time.time() * 1000)
        deadline = time.monotonic() + self.recommender.settings.request_timeout_ms / 1000
        limits = self.recommender.limits(model)
        if isinstance(payload, InferRequest):
            return ParsedRequest(model, [parse_v2(payload, self.surface, limits, now_ms)], payload, deadline)
        if isinstance(payload, dict):
            return ParsedRequest(model, parse_v1(payload, self.surface, limits, now_ms), None, deadline)
        raise InvalidInput("the request body must be a JSON object")

    def validate(self, parsed: ParsedRequest) -> ParsedRequest:
        return parsed  # preprocess validated it; KServe's own checks are for raw bodies

    async def predict(self, parsed: ParsedRequest, headers=None, response_headers=None) -> Answered:
        futures = [
            asyncio.wrap_future(self.batcher.submit(parsed.model, request, self.surface, parsed.deadline))
            for request in parsed.requests
        ]
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*futures), max(0.0, parsed.deadline - time.monotonic())
            )
        except (TimeoutError, DeadlineExceeded):
            for future in futures:
                future.cancel()  # instances still queued are dropped
            raise DeadlineExceeded(
                f"the request was not answered within the server's "
                f"{self.recommender.settings.request_timeout_ms} ms (--request-timeout-ms)"
            ) from None
        return Answered(parsed, list(answers))

    async def postprocess(self, answered: Answered, headers=None, response_headers=None):
        request = answered.parsed.v2
        if request is not None:
            return _v2_response(self.name, request, answered.answers[0])
        return {"predictions": [_v1_prediction(answer) for answer in answered.answers]}


def _v1_prediction(answer: Recommendation) -> dict:
    rows = zip(answer.item_ids, answer.scores, answer.outcomes, answer.steps, strict=True)
    return {
        "items": [
            {"item_id": int(i), "score": round(float(s), 6), "outcome": o, "step": int(t)}
            for i, s, o, t in rows
        ],
        "cold_start": answer.cold_start,
        "context_used": answer.context_used,
        "model_version": answer.model_version,
    }


def _output(name: str, datatype: str, values: list) -> InferOutput:
    return InferOutput(name=name, shape=[len(values)], datatype=datatype, data=values)


def _v2_response(model_name: str, request: InferRequest, answer: Recommendation) -> InferResponse:
    """REST v2 and gRPC alike (KServe encodes this one response for either)."""
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
