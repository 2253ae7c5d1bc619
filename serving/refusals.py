"""What the server refuses and how each refusal is answered, logged and counted, for REST and gRPC alike.

A refused request is the caller's mistake, not the server's: it is logged as one WARNING line (no traceback,
the message cut short) and counted in `pinrec_requests_total{status="invalid"}` (or "timeout"). Only a
failure of the server itself is an ERROR with its traceback.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from pinrec.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

LOGGED_CHARS = 300  # of a refusal's message; the caller gets all of it

# /v1/models/NAME:predict, /v2/models/NAME/infer, /v2/models/NAME/versions/V/infer
_INFERENCE_PATH = re.compile(r"^/v[12]/models/([^/:]+)(?::predict|(?:/versions/[^/]+)?/infer)$")


class DeadlineExceeded(Exception):
    """The request ran past the server's deadline (HTTP 504, gRPC DEADLINE_EXCEEDED)."""


class RepositoryDisabled(Exception):
    """Loading and unloading models is not offered: the served models are the artifact's surfaces
    (HTTP 403, gRPC PERMISSION_DENIED)."""

    def __init__(self, model_name: str) -> None:
        super().__init__(
            f"the model repository extension is disabled: {model_name} cannot be loaded or unloaded over "
            "the API; point --artifacts at a new artifact to change what is served"
        )


class NotServed(Exception):
    """A KServe endpoint or field this server does not offer (HTTP 404, gRPC NOT_FOUND)."""


def versions_not_served(model_name: str, version: str) -> NotServed:
    return NotServed(
        f"model versions are not served (asked for {model_name} version {version!r:.40}): ask {model_name} "
        "without a version; the answer names the served artifact's version"
    )


def inference_model(path: str) -> str | None:
    """The model an inference path names (None for other paths)."""
    match = _INFERENCE_PATH.match(path)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Refusals:
    """Logs and counts refused requests; only served surfaces become metric labels."""

    metrics: ServingMetrics
    surfaces: tuple[str, ...]

    def invalid(self, model_name: str | None, reason: object) -> None:
        if model_name in self.surfaces:
            self.metrics.refused(model_name)
        log.warning("refused a request to %s: %.*s", model_name or "-", LOGGED_CHARS, reason)

    def timed_out(self, model_name: str | None, reason: object) -> None:
        if model_name in self.surfaces:
            self.metrics.timed_out(model_name)
        log.warning("request to %s ran past its deadline: %s", model_name or "-", reason)
