"""The gRPC side of `pinrec serve`: KServe's v2 servicer on the chosen interface, its messages capped at the
REST body limit, the model repository calls refused, and refusals answered and logged as `refusals` says."""

from __future__ import annotations

import logging
from concurrent import futures

from grpc import StatusCode, aio
from grpc_interceptor import AsyncExceptionToStatusInterceptor
from kserve.errors import (
    InferenceError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotLive,
    ServerNotReady,
    UnsupportedProtocol,
)
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer

from pinrec.serving.refusals import (
    DeadlineExceeded,
    NotServed,
    Refusals,
    RepositoryDisabled,
    versions_not_served,
)

log = logging.getLogger(__name__)

STATUS = {  # refusals and unavailability: the caller's or the moment's, logged without a traceback
    InvalidInput: StatusCode.INVALID_ARGUMENT,
    UnsupportedProtocol: StatusCode.INVALID_ARGUMENT,
    DeadlineExceeded: StatusCode.DEADLINE_EXCEEDED,
    RepositoryDisabled: StatusCode.PERMISSION_DENIED,
    ModelNotFound: StatusCode.NOT_FOUND,
    NotServed: StatusCode.NOT_FOUND,
    ModelNotReady: StatusCode.UNAVAILABLE,
    ServerNotReady: StatusCode.UNAVAILABLE,
    ServerNotLive: StatusCode.UNAVAILABLE,
    NotImplementedError: StatusCode.UNIMPLEMENTED,
}


class RefusalsToStatus(AsyncExceptionToStatusInterceptor):
    def __init__(self, refusals: Refusals) -> None:
        super().__init__()
        self.refusals = refusals

    async def handle_exception(self, ex, request_or_iterator, context, method_name):
        status = next((code for kind, code in STATUS.items() if isinstance(ex, kind)), None)
        model = getattr(request_or_iterator, "model_name", None) or getattr(request_or_iterator, "name", None)
        if status is None and isinstance(ex, InferenceError):  # KServe's decoding of a malformed tensor
            status = StatusCode.INVALID_ARGUMENT
        if status is None:
            log.error("gRPC %s failed", method_name, exc_info=ex)
            await context.abort(StatusCode.INTERNAL, "internal server error; see the server's log")
            return
        if status == StatusCode.INVALID_ARGUMENT:
            self.refusals.invalid(model, ex)
        elif status == StatusCode.DEADLINE_EXCEEDED:
            self.refusals.timed_out(model, ex)
        else:
            log.warning("gRPC %s on %s: %s %s", method_name, model or "-", status.name, ex)
        await context.abort(status, str(ex))


class GuardedServicer(InferenceServicer):
    """KServe's servicer without the model repository extension (any caller could unload a surface)."""

    async def ModelInfer(self, request, context):
        if request.model_version:
            raise versions_not_served(request.model_name, request.model_version)
        return await super().ModelInfer(request, context)

    async def RepositoryModelLoad(self, request, context):
        raise self._refusal(request.model_name)

    async def RepositoryModelUnload(self, request, context):
        raise self._refusal(request.model_name)

    def _refusal(self, model_name: str) -> Exception:
        if model_name not in self._data_plane.model_registry.get_models():
            return ModelNotFound(model_name)
        return RepositoryDisabled(model_name)


class GuardedGRPCServer(GRPCServer):
    def __init__(
        self,
        dataplane: DataPlane,
        refusals: Refusals,
        host: str,
        port: int,
        max_message_bytes: int,
        grace_period: int = 30,
    ) -> None:
        super().__init__(port, dataplane, None, kwargs={}, grace_period=grace_period)
        self.refusals = refusals
        self.host = host
        self.max_message_bytes = max_message_bytes

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(RefusalsToStatus(self.refusals),),
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            GuardedServicer(self._data_plane, None), self._server
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._server.add_insecure_port(f"{host}:{self._port}")
        log.info("gRPC listens on %s:%d", host, self._port)
        await self._server.start()
        await self._server.wait_for_termination()
