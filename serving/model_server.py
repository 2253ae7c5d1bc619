"""KServe's ModelServer as `pinrec serve` runs it: REST and gRPC on the chosen interface, bodies and messages
capped, decoding failures answered 400, no model repository extension, one refusal policy for both."""

from __future__ import annotations

import asyncio

from kserve import ModelServer

from pinrec.serving.dataplane import GuardedDataPlane
from pinrec.serving.grpc_server import GuardedGRPCServer
from pinrec.serving.metrics import ServingMetrics
from pinrec.serving.refusals import Refusals
from pinrec.serving.rest_server import GuardedRESTServer
from pinrec.serving.settings import ServeSettings


class GuardedModelServer(ModelServer):
    def __init__(self, settings: ServeSettings, metrics: ServingMetrics) -> None:
        super().__init__(http_port=settings.http_port, grpc_port=settings.grpc_port, workers=1)
        self.settings = settings
        self.metrics = metrics
        self.dataplane = GuardedDataPlane(model_registry=self.registered_models)

    def start(self, models: list) -> None:
        """ModelServer.start with the guarded REST and gRPC servers (one process; KServe's multi-process
        REST workers would each load the artifact)."""
        self._register_and_check_atleast_one_model_is_ready(models)
        refusals = Refusals(self.metrics, tuple(model.name for model in models))
        limit = self.settings.max_request_bytes
        self._rest_server = GuardedRESTServer(
            self.dataplane, refusals, self.settings.host, self.http_port, limit, self.grace_period
        )
        self._grpc_server = GuardedGRPCServer(
            self.dataplane, refusals, self.settings.host, self.grpc_port, limit, self.grace_period
        )
        self.servers += [self._rest_server.start(), self._grpc_server.start(self.max_threads)]
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())
