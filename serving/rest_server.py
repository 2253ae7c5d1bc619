"""The REST side of `pinrec serve`: KServe's v1 and v2 endpoints behind a guard that limits the body size and
reads inference bodies as JSON whatever reasonable content type they carry, without the model repository
endpoints, with refusals answered and logged as `refusals` says."""

from __future__ import annotations

import logging
from http import HTTPStatus

import fastapi
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING, INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotLive,
    ServerNotReady,
)
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.server import RESTServer, metrics_handler
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
from starlette.exceptions import HTTPException as StarletteHTTPException

from pinrec.serving.refusals import (
    DeadlineExceeded,
    NotServed,
    Refusals,
    RepositoryDisabled,
    inference_model,
    versions_not_served,
)

log = logging.getLogger(__name__)

REPOSITORY_PREFIX = "/v2/repository/"
VALIDATION_ERRORS_SHOWN = 5
DRAINED_BYTES = 256 * 1024 * 1024  # a refused body is read and dropped up to this, then the connection closes


class RequestGuard:
    """ASGI middleware in front of everything: a body over `max_bytes` is answered 413 before it is read
    whole (a declared Content-Length at once), and an inference body without KServe's binary-data header is
    JSON, so `curl -d`'s form type, `application/json; charset=utf-8` or no content type all parse alike."""

    def __init__(self, app, max_bytes: int, refusals: Refusals) -> None:
        self.app, self.max_bytes, self.refusals = app, max_bytes, refusals

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        model = inference_model(scope["path"])
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        too_large = declared.isdigit() and int(declared) > self.max_bytes  # refused unread
        body, more = bytearray(), not too_large
        while more and not too_large:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            too_large = len(body) > self.max_bytes
        if too_large:
            # The client is still sending (unless it waits for "100 Continue", which a refusal never sends).
            if (more or not body) and headers.get(b"expect", b"").lower() != b"100-continue":
                await _drain(receive, DRAINED_BYTES - len(body))
            size = f"{int(declared)} bytes" if declared.isdigit() else f"more than {self.max_bytes} bytes"
            await self._too_large(scope, send, model, size)
            return
        if model is not None and INFERENCE_CONTENT_LENGTH_HEADER.encode() not in headers:
            kept = [(name, value) for name, value in scope["headers"] if name != b"content-type"]
            scope = {**scope, "headers": [*kept, (b"content-type", b"application/json")]}
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _too_large(self, scope, send, model: str | None, size: str) -> None:
        reason = (
            f"the request body has {size}; this server accepts at most {self.max_bytes} (--max-request-bytes)"
        )
        self.refusals.invalid(model, reason)
        response = JSONResponse({"error": reason}, status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        response.headers["connection"] = "close"
        await response(scope, _nothing, send)


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replayed


async def _drain(receive, limit: int) -> None:
    """Read and drop the rest of a refused body (up to `limit` bytes), so that a client still sending it
    reads the 413 instead of a reset connection; memory stays flat."""
    while limit > 0:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        limit -= len(message.get("body", b""))


async def _nothing():
    return {"type": "http.disconnect"}


def _error(status: HTTPStatus, reason: object) -> JSONResponse:
    return JSONResponse({"error": str(reason)}, status_code=status)


def _validation_reason(error: RequestValidationError) -> str:
    """Where the body is wrong and why, without echoing the body back."""
    problems = [
        f"{'.'.join(str(part) for part in e.get('loc', ()) if part != 'body') or 'body'}: {e.get('msg', '')}"
        for e in error.errors()[:VALIDATION_ERRORS_SHOWN]
    ]
    more = len(error.errors()) - VALIDATION_ERRORS_SHOWN
    return "invalid request body: " + "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


class GuardedRESTServer(RESTServer):
    def __init__(
        self,
        dataplane: DataPlane,
        refusals: Refusals,
        host: str,
        http_port: int,
        max_request_bytes: int,
        grace_period: int = 30,
    ) -> None:
        super().__init__(FASTAPI_APP_IMPORT_STRING, dataplane, None, http_port, grace_period=grace_period)
        self.config.host = host
        self.refusals = refusals
        self.max_request_bytes = max_request_bytes

    def _register_endpoints(self, app: fastapi.FastAPI) -> None:
        app.add_api_route("/", self.dataplane.live)
        app.add_api_route("/metrics", metrics_handler, methods=["GET"])
        # The repository extension would let any caller unload a surface. Routes match in the order they
        # are added: these answer before KServe's own (registered below) can.
        for action in ("load", "unload"):
            app.add_api_route(
                f"{REPOSITORY_PREFIX}models/{{model_name}}/{action}", self._repository, methods=["POST"]
            )
        # Explanations and model versions are not served: 404 saying so, not KServe's 501.
        app.add_api_route("/v1/models/{model_name}:explain", self._no_explainer, methods=["POST"])
        versioned = "/v2/models/{model_name}/versions/{model_version}"
        for path, methods in (
            (versioned, ["GET"]),
            (f"{versioned}/ready", ["GET"]),
            (f"{versioned}/infer", ["POST"]),
        ):
            app.add_api_route(path, self._no_versions, methods=methods)
        register_v1_endpoints(app, self.dataplane, None)
        register_v2_endpoints(app, self.dataplane, None)

    async def _repository(self, model_name: str) -> None:
        if model_name not in self.dataplane.model_registry.get_models():
            raise ModelNotFound(model_name)
        raise RepositoryDisabled(model_name)

    async def _no_explainer(self, model_name: str) -> None:
        raise NotServed(f"{model_name} has no explainer: ask /v1/models/{model_name}:predict")

    async def _no_versions(self, model_name: str, model_version: str) -> None:
        raise versions_not_served(model_name, model_version)

    def _add_exception_handlers(self, app: fastapi.FastAPI) -> None:
        refusals = self.refusals

        async def invalid(request: fastapi.Request, error: Exception) -> JSONResponse:
            reason = _validation_reason(error) if isinstance(error, RequestValidationError) else str(error)
            refusals.invalid(inference_model(request.url.path), reason)
            return _error(HTTPStatus.BAD_REQUEST, reason)

        async def timed_out(request: fastapi.Request, error: Exception) -> JSONResponse:
            refusals.timed_out(inference_model(request.url.path), error)
            return _error(HTTPStatus.GATEWAY_TIMEOUT, error)

        def plain(status: HTTPStatus):
            async def handler(request: fastapi.Request, error: Exception) -> JSONResponse:
                log.warning("%s %s: %d %s", request.method, request.url.path, status, error)
                return _error(status, error)

            return handler

        async def http_error(request: fastapi.Request, error: StarletteHTTPException) -> JSONResponse:
            if error.status_code < 500 and (model := inference_model(request.url.path)):
                refusals.invalid(model, error.detail)
            return JSONResponse(
                {"error": str(error.detail)}, status_code=error.status_code, headers=error.headers
            )

        async def failed(request: fastapi.Request, error: Exception) -> JSONResponse:
            log.error("%s %s failed", request.method, request.url.path, exc_info=error)
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error; see the server's log")

        app.add_exception_handler(InvalidInput, invalid)
        app.add_exception_handler(RequestValidationError, invalid)
        app.add_exception_handler(DeadlineExceeded, timed_out)
        app.add_exception_handler(RepositoryDisabled, plain(HTTPStatus.FORBIDDEN))
        app.add_exception_handler(ModelNotFound, plain(HTTPStatus.NOT_FOUND))
        app.add_exception_handler(NotServed, plain(HTTPStatus.NOT_FOUND))
        app.add_exception_handler(StarletteHTTPException, http_error)
        for unavailable in (ModelNotReady, ServerNotReady, ServerNotLive):
            app.add_exception_handler(unavailable, plain(HTTPStatus.SERVICE_UNAVAILABLE))
        app.add_exception_handler(NotImplementedError, plain(HTTPStatus.NOT_IMPLEMENTED))
        app.add_exception_handler(Exception, failed)

    def _add_middlewares(self, app: fastapi.FastAPI) -> None:
        super()._add_middlewares(app)
        app.add_middleware(
            RequestGuard, max_bytes=self.max_request_bytes, refusals=self.refusals
        )  # outermost
