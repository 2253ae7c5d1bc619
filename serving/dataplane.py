"""KServe's data plane with every decoding failure a 400: the v2 binary-data extension (a JSON part of
`inference-header-content-length` bytes, then each input's `binary_data_size` bytes) is checked whole before
KServe reads it, and anything else KServe's decoding raises becomes InvalidInput instead of a 500."""

from __future__ import annotations

import orjson
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane

from pinrec.serving.request import check_binary_size, shape_size, split_strings


def check_binary_request(body: bytes, headers: dict) -> None:
    """The binary-data layout adds up: the JSON length is an integer within the body, every input without
    JSON data declares a non-negative `binary_data_size` that fits its shape and datatype, and the sizes
    account for every byte after the JSON part."""
    declared = str(headers.get(INFERENCE_CONTENT_LENGTH_HEADER, ""))
    if not declared.isdigit() or int(declared) > len(body):
        raise InvalidInput(
            f"{INFERENCE_CONTENT_LENGTH_HEADER} must be the byte length of the request's JSON part, an "
            f"integer from 0 to the body's {len(body)} bytes; got {declared!r:.40}"
        )
    json_length = int(declared)
    try:
        request = orjson.loads(body[:json_length])
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"the request's JSON part is not JSON: {error}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise InvalidInput('the request\'s JSON part must be an object with a list of "inputs"')
    offset = json_length
    for position, tensor in enumerate(request["inputs"]):
        if not isinstance(tensor, dict):
            raise InvalidInput(f"inputs[{position}] must be an object")
        name = str(tensor.get("name", f"inputs[{position}]"))[:40]
        if "data" in tensor:
            continue
        parameters = tensor.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(
                f"input {name} needs data or a non-negative integer binary_data_size, got {size!r:.40}"
            )
        count, datatype = shape_size(name, tensor.get("shape")), str(tensor.get("datatype", ""))
        check_binary_size(name, datatype, count, size)
        if datatype == "BYTES":
            split_strings(name, body[offset : offset + size], count)
        offset += size
    if offset != len(body):
        raise InvalidInput(
            f"the inputs declare {offset - json_length} bytes of binary data; the body has "
            f"{len(body) - json_length} after its JSON part"
        )


class GuardedDataPlane(DataPlane):
    def metadata(self) -> dict:
        # Loading and unloading models is disabled (rest_server.py, grpc_server.py): do not advertise it.
        return {**super().metadata(), "extensions": ["binary_tensor_data"]}

    def decode(self, body, headers, *args, **kwargs):
        try:
            return super().decode(body, headers, *args, **kwargs)
        except InvalidInput:
            raise
        except Exception as error:  # KServe's decoding of a malformed body: the caller's mistake
            raise InvalidInput(f"the request body could not be decoded: {error}") from None

    def decode_inference_request(self, body, headers, model_name):
        if isinstance(body, bytes):
            check_binary_request(body, headers)
        return super().decode_inference_request(body, headers, model_name)
