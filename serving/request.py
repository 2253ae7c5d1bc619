"""Recommendation requests: one validated shape for v1 instances and Open Inference Protocol v2 tensors.

Every refusal is a kserve InvalidInput (HTTP 400, gRPC INVALID_ARGUMENT) whose message names the field, so
a bad request never reaches the model and never becomes a 500.

v1 instance (and the JSON equivalent of the v2 tensors):

    {"user_id": 42, "k": 100, "budget": {"save": 0.6, "click": 0.4}, "steps": 3,
     "context": {"query_id": 7, "subject_item_id": 123},
     "history": {"items": [..], "actions": [..], "surfaces": [..], "times_ms": [..]},
     "now_ms": 1764959230390}

Only `user_id` or `history` is required. v2 tensors: user_id, k, steps, now_ms, query_id, subject_item_id
(INT64, one value each), outcomes (BYTES) with shares (FP32/FP64), history_items and history_times_ms
(INT64), history_actions and history_surfaces (BYTES).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

INT64_MAX = 2**63 - 1
BUDGET_TOLERANCE = 1e-3  # shares must sum to 1 within this


@dataclass(frozen=True)
class Limits:
    """What a request may ask for (from the server settings and the loaded artifact)."""

    outcomes: tuple[str, ...]  # outcomes the model is conditioned on
    surfaces: tuple[str, ...]  # surface names (explicit histories)
    actions: tuple[str, ...]  # action names (explicit histories)
    default_outcomes: tuple[str, ...]  # the default budget: outcome names ...
    default_shares: tuple[float, ...]  # ... and their shares
    default_k: int
    max_k: int
    default_steps: int
    max_steps: int
    max_history: int
    max_instances: int
    max_request_queries: int  # generated queries (steps x outcomes) summed over a call's instances
    max_request_items: int  # items asked for (k) summed over a call's instances


@dataclass(frozen=True)
class RawHistory:
    """A user's events as a request or the feature store gives them: raw item ids, which the served
    artifact may not know (`LoadedModel.indexed` turns them into an `IndexedHistory`)."""

    item_ids: np.ndarray  # raw item ids, oldest first
    actions: np.ndarray  # action codes
    surfaces: np.ndarray  # surface codes
    times_ms: np.ndarray


@dataclass(frozen=True)
class RecommendRequest:
    user_id: int | None
    history: RawHistory | None  # explicit history (replaces the feature store's)
    k: int
    outcomes: tuple[str, ...]  # ordered by share, largest first (the first is fed back while decoding)
    shares: tuple[float, ...]
    steps: int
    query_id: int | None
    subject_item_id: int | None
    now_ms: int | None


FIELDS = {"user_id", "history", "k", "budget", "steps", "context", "now_ms"}
CONTEXT_FIELDS = {"query_id", "subject_item_id"}
HISTORY_FIELDS = {"items", "actions", "surfaces", "times_ms"}


def _int(value, field: str, low: int = 0, high: int = INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInput(f"{field} must be an integer, got {type(value).__name__} {value!r:.40}")
    if not low <= int(value) <= high:
        raise InvalidInput(f"{field} must be between {low} and {high}, got {value}")
    return int(value)


def _object(value, field: str, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise InvalidInput(
            f"{field} has unknown field(s) {', '.join(map(str, unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return value


def _list(value, field: str, limit: int) -> list:
    if not isinstance(value, list):
        raise InvalidInput(f"{field} must be a list, got {type(value).__name__}")
    if len(value) > limit:
        raise InvalidInput(f"{field} has {len(value)} entries; at most {limit} are accepted")
    return value


def _names(values: list, field: str, known: tuple[str, ...]) -> np.ndarray:
    codes = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or value not in known:
            raise InvalidInput(f"{field}[{i}] must be one of {', '.join(known)}, got {value!r:.40}")
        codes.append(known.index(value))
    return np.array(codes, dtype=np.int64)


def _budget(value, limits: Limits) -> tuple[tuple[str, ...], tuple[float, ...]]:
    if value is None:
        return limits.default_outcomes, limits.default_shares
    if not isinstance(value, dict) or not value:
        raise InvalidInput(
            'budget must be a non-empty object of outcome shares, e.g. {"save": 0.6, "click": 0.4}'
        )
    shares = {}
    for outcome, share in value.items():
        if outcome not in limits.outcomes:
            raise InvalidInput(
                f"budget names unknown outcome {outcome!r:.40}; known: {', '.join(limits.outcomes)}"
            )
        if isinstance(share, bool) or not isinstance(share, int | float) or not math.isfinite(share):
            raise InvalidInput(f"budget.{outcome} must be a finite number, got {share!r:.40}")
        if share < 0:
            raise InvalidInput(f"budget.{outcome} must not be negative, got {share}")
        shares[outcome] = float(share)
    total = sum(shares.values())
    if abs(total - 1) > BUDGET_TOLERANCE:
        raise InvalidInput(f"budget shares must sum to 1, got {total:.6g}")
    ordered = sorted((o for o in shares if shares[o] > 0), key=lambda o: -shares[o])
    return tuple(ordered), tuple(shares[o] / total for o in ordered)


def _history(value, limits: Limits, surface: str, now_ms: int) -> RawHistory:
    fields = _object(value, "history", HISTORY_FIELDS)
    if "items" not in fields:
        raise InvalidInput("history.items is required (raw item ids, oldest first)")
    items = _list(fields["items"], "history.items", limits.max_history)
    n = len(items)
    item_ids = np.array([_int(v, f"history.items[{i}]") for i, v in enumerate(items)], dtype=np.int64)
    for name in ("actions", "surfaces", "times_ms"):
        if name in fields and len(_list(fields[name], f"history.{name}", limits.max_history)) != n:
            raise InvalidInput(f"history.{name} has {len(fields[name])} entries but history.items has {n}")
    default_action = limits.default_outcomes[0]
    actions = _names(fields.get("actions", [default_action] * n), "history.actions", limits.actions)
    surfaces = _names(fields.get("surfaces", [surface] * n), "history.surfaces", limits.surfaces)
    if "times_ms" in fields:
        times = np.array(
            [_int(v, f"history.times_ms[{i}]") for i, v in enumerate(fields["times_ms"])], dtype=np.int64
        )
        if (np.diff(times) < 0).any():
            raise InvalidInput("history.times_ms must be oldest first (non-decreasing)")
    else:  # ours: one minute apart, ending a minute before the request
        times = now_ms - 60_000 * np.arange(n, 0, -1, dtype=np.int64)
    return RawHistory(item_ids, actions, surfaces, times)


def parse_instance(instance, surface: str, limits: Limits, now_ms: int) -> RecommendRequest:
    fields = _object(instance, "instance", FIELDS)
    request_now = _int(fields["now_ms"], "now_ms") if "now_ms" in fields else None
    user_id = _int(fields["user_id"], "user_id") if "user_id" in fields else None
    history = (
        _history(fields["history"], limits, surface, request_now or now_ms) if "history" in fields else None
    )
    if user_id is None and history is None:
        raise InvalidInput("user_id is required (or an explicit history)")
    context = _object(fields.get("context", {}), "context", CONTEXT_FIELDS)
    outcomes, shares = _budget(fields.get("budget"), limits)
    return RecommendRequest(
        user_id=user_id,
        history=history,
        k=_int(fields.get("k", limits.default_k), "k", 1, limits.max_k),
        outcomes=outcomes,
        shares=shares,
        steps=_int(fields.get("steps", limits.default_steps), "steps", 1, limits.max_steps),
        query_id=_int(context["query_id"], "context.query_id") if "query_id" in context else None,
        subject_item_id=(
            _int(context["subject_item_id"], "context.subject_item_id")
            if "subject_item_id" in context
            else None
        ),
        now_ms=request_now,
    )


def parse_v1(body, surface: str, limits: Limits, now_ms: int) -> list[RecommendRequest]:
    fields = _object(body, "request body", {"instances"})
    if "instances" not in fields:
        raise InvalidInput('instances is required: {"instances": [{"user_id": 42, ...}]}')
    instances = fields["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("instances must be a non-empty list")
    _list(instances, "instances", limits.max_instances)
    requests = [parse_instance(instance, surface, limits, now_ms) for instance in instances]
    check_work(requests, limits)
    return requests


def check_work(requests: list[RecommendRequest], limits: Limits) -> None:
    """Each limit holds per instance; their product over many instances must not: one call may ask for at
    most max_request_queries generated queries and max_request_items items in all."""
    queries = sum(r.steps * len(r.outcomes) for r in requests)
    if queries > limits.max_request_queries:
        raise InvalidInput(
            f"instances ask for {queries} generated queries in all (steps x outcomes per instance); at most "
            f"{limits.max_request_queries} per request: send fewer instances per request or fewer steps"
        )
    items = sum(r.k for r in requests)
    if items > limits.max_request_items:
        raise InvalidInput(
            f"instances ask for {items} items in all (the sum of k); at most {limits.max_request_items} per "
            "request: send fewer instances per request or a smaller k"
        )


# --- Open Inference Protocol v2 ------------------------------------------------------------------------

SCALARS = {"user_id", "k", "steps", "now_ms", "query_id", "subject_item_id"}
INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
FLOAT_TYPES = {"FP16", "FP32", "FP64"}
V2_TYPES = {
    **{name: INT_TYPES for name in SCALARS | {"history_items", "history_times_ms"}},
    "outcomes": {"BYTES"},
    "shares": FLOAT_TYPES,
    "history_actions": {"BYTES"},
    "history_surfaces": {"BYTES"},
}


INT_RANGES = {name: (int(np.iinfo(name.lower()).min), int(np.iinfo(name.lower()).max)) for name in INT_TYPES}


def shape_size(name: str, shape) -> int:
    """How many values a tensor of this declared shape holds."""
    if not isinstance(shape, list | tuple) or not all(
        isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise InvalidInput(f"input {name} must have a shape of non-negative integers, got {shape!r:.60}")
    return math.prod(int(n) for n in shape)


def _flat(data, name: str) -> list:
    """The elements of JSON tensor data in row-major order (the protocol allows nested lists)."""
    if not isinstance(data, list | tuple):
        raise InvalidInput(f"input {name} data must be a list, got {type(data).__name__}")
    flat: list = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list | tuple):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _checked_element(value, datatype: str, name: str, position: int):
    """One JSON/gRPC element of a tensor, refused unless its type is the declared datatype's: no silent
    float-to-int, string-to-number or bool-to-int conversion."""
    where = f"input {name}[{position}]"
    if datatype in INT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise InvalidInput(
                f"{where} must be an integer ({datatype}), got {type(value).__name__} {value!r:.40}"
            )
        low, high = INT_RANGES[datatype]
        if not low <= int(value) <= high:
            raise InvalidInput(f"{where} does not fit {datatype}: {value}")
        return int(value)
    if datatype in FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise InvalidInput(
                f"{where} must be a number ({datatype}), got {type(value).__name__} {value!r:.40}"
            )
        if not math.isfinite(value):
            raise InvalidInput(f"{where} must be a finite number, got {value}")
        return float(value)
    if isinstance(value, bytes):  # BYTES: gRPC and binary data give bytes, JSON gives strings
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{where} is not valid UTF-8") from None
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string (BYTES), got {type(value).__name__} {value!r:.40}")
    return value


def _fixed_dtype(datatype: str) -> np.dtype:
    """The little-endian numpy type of a fixed-size v2 datatype (INT64, FP32, ...)."""
    return np.dtype(datatype.lower().replace("fp", "float")).newbyteorder("<")


def check_binary_size(name: str, datatype: str, size: int, nbytes: int) -> None:
    """Binary data of a fixed-size datatype must hold exactly `size` elements (BYTES is checked when its
    length prefixes are read)."""
    if datatype not in INT_TYPES | FLOAT_TYPES:
        return
    needed = size * _fixed_dtype(datatype).itemsize
    if nbytes != needed:
        raise InvalidInput(
            f"input {name} has {nbytes} bytes of binary data; {size} {datatype} values need {needed}"
        )


def split_strings(name: str, data: bytes, count: int) -> list[str]:
    """A BYTES tensor's binary data: `count` elements, each a 4-byte little-endian length and that many
    bytes of UTF-8, filling the data exactly (REST binary extension and gRPC raw_input_contents alike)."""
    values, offset = [], 0
    for position in range(count):
        if offset + 4 > len(data):
            raise InvalidInput(f"input {name} has binary data for {position} of its {count} values")
        (length,) = struct.unpack_from("<I", data, offset)
        if offset + 4 + length > len(data):
            raise InvalidInput(f"input {name}[{position}]: its length prefix ({length}) runs past the data")
        try:
            values.append(data[offset + 4 : offset + 4 + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input {name}[{position}] is not valid UTF-8") from None
        offset += 4 + length
    if offset != len(data):
        raise InvalidInput(f"input {name} has {len(data) - offset} bytes after its {count} values")
    return values


def _raw_elements(tensor, size: int) -> list:
    """The elements of a tensor sent as binary data (REST binary extension, gRPC raw_input_contents)."""
    raw = tensor._raw_data  # kserve keeps binary tensor data here
    if tensor.datatype == "BYTES":
        return split_strings(tensor.name, raw, size)
    check_binary_size(tensor.name, tensor.datatype, size, len(raw))
    return np.frombuffer(raw, dtype=_fixed_dtype(tensor.datatype)).tolist()


def _tensor_values(tensor) -> list:
    """The flat values of a v2 input tensor, each checked against the declared datatype, their count
    against the declared shape."""
    name = tensor.name
    if name not in V2_TYPES:
        raise InvalidInput(f"input {name!r:.40} is unknown; known inputs: {', '.join(sorted(V2_TYPES))}")
    if tensor.datatype not in V2_TYPES[name]:
        raise InvalidInput(
            f"input {name} must have datatype {'/'.join(sorted(V2_TYPES[name]))}, got {tensor.datatype}"
        )
    size = shape_size(name, tensor.shape)
    if getattr(tensor, "_raw_data", None) is not None:
        elements = _raw_elements(tensor, size)
    else:
        elements = _flat(tensor.data, name)
    if len(elements) != size:
        raise InvalidInput(
            f"input {name} has {len(elements)} values but its shape {tensor.shape} holds {size}"
        )
    values = [_checked_element(v, tensor.datatype, name, i) for i, v in enumerate(elements)]
    if name in SCALARS and len(values) != 1:
        raise InvalidInput(f"input {name} must hold exactly one value, got {len(values)}")
    return values


def parse_v2(request: InferRequest, surface: str, limits: Limits, now_ms: int) -> RecommendRequest:
    tensors: dict[str, list] = {}
    for tensor in request.inputs:
        if tensor.name in tensors:
            raise InvalidInput(f"input {tensor.name} is given twice")
        tensors[tensor.name] = _tensor_values(tensor)
    instance: dict = {
        name: tensors[name][0] for name in ("user_id", "k", "steps", "now_ms") if name in tensors
    }
    context = {name: tensors[name][0] for name in CONTEXT_FIELDS if name in tensors}
    if context:
        instance["context"] = context
    if ("outcomes" in tensors) != ("shares" in tensors):
        raise InvalidInput("inputs outcomes and shares go together (one share per outcome)")
    if "outcomes" in tensors:
        if len(tensors["outcomes"]) != len(tensors["shares"]):
            raise InvalidInput(
                f"input shares has {len(tensors['shares'])} values for {len(tensors['outcomes'])} outcomes"
            )
        if len(set(tensors["outcomes"])) != len(tensors["outcomes"]):
            raise InvalidInput("input outcomes names an outcome twice")
        instance["budget"] = dict(zip(tensors["outcomes"], tensors["shares"], strict=True))
    history = {key: tensors[f"history_{key}"] for key in HISTORY_FIELDS if f"history_{key}" in tensors}
    if history:
        instance["history"] = history
    request = parse_instance(instance, surface, limits, now_ms)
    check_work([request], limits)
    return request
