"""Clients for the three protocols, used by the tests, the benchmark and the demo (and a reference for
users): the same request as a v1 instance, v2 REST tensors or a v2 gRPC message.

    instance = {"user_id": 42, "k": 20, "budget": {"save": 0.6, "click": 0.4}, "context": {"query_id": 7}}
"""

from __future__ import annotations

import grpc
import requests
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

SCALAR_INPUTS = ("user_id", "k", "steps", "now_ms")
CONTEXT_INPUTS = ("query_id", "subject_item_id")


def v2_inputs(instance: dict) -> list[dict]:
    """The v2 tensors of a request given as a v1 instance: [{"name", "datatype", "shape", "data"}]."""
    tensors = []

    def add(name: str, datatype: str, values: list) -> None:
        tensors.append({"name": name, "datatype": datatype, "shape": [len(values)], "data": values})

    for name in SCALAR_INPUTS:
        if name in instance:
            add(name, "INT64", [instance[name]])
    for name in CONTEXT_INPUTS:
        if name in instance.get("context", {}):
            add(name, "INT64", [instance["context"][name]])
    if "budget" in instance:
        add("outcomes", "BYTES", list(instance["budget"]))
        add("shares", "FP32", list(instance["budget"].values()))
    history = instance.get("history", {})
    for key, datatype in (
        ("items", "INT64"),
        ("times_ms", "INT64"),
        ("actions", "BYTES"),
        ("surfaces", "BYTES"),
    ):
        if key in history:
            add(f"history_{key}", datatype, history[key])
    return tensors


def rest_v1(
    base_url: str, surface: str, instances: list[dict], timeout: float = 10, session=requests
) -> requests.Response:
    body = {"instances": instances}
    return session.post(f"{base_url}/v1/models/{surface}:predict", json=body, timeout=timeout)


def rest_v2(
    base_url: str, surface: str, instance: dict, timeout: float = 10, session=requests
) -> requests.Response:
    body = {"inputs": v2_inputs(instance)}
    return session.post(f"{base_url}/v2/models/{surface}/infer", json=body, timeout=timeout)


def v2_outputs(body: dict) -> dict[str, list]:
    """A v2 REST response's outputs by name."""
    return {output["name"]: output["data"] for output in body["outputs"]}


def grpc_stub(address: str) -> GRPCInferenceServiceStub:
    return GRPCInferenceServiceStub(grpc.insecure_channel(address))


def grpc_request(surface: str, instance: dict) -> pb.ModelInferRequest:
    inputs = []
    for tensor in v2_inputs(instance):
        values = tensor["data"]
        if tensor["datatype"] == "BYTES":
            contents = pb.InferTensorContents(bytes_contents=[str(v).encode() for v in values])
        elif tensor["datatype"] == "FP32":
            contents = pb.InferTensorContents(fp32_contents=values)
        else:
            contents = pb.InferTensorContents(int64_contents=values)
        inputs.append(
            pb.ModelInferRequest.InferInputTensor(
                name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"], contents=contents
            )
        )
    return pb.ModelInferRequest(model_name=surface, inputs=inputs)


def grpc_outputs(response: pb.ModelInferResponse) -> dict[str, list]:
    """A gRPC response's outputs by name (strings decoded)."""
    out = {}
    for tensor in response.outputs:
        contents = tensor.contents
        if tensor.datatype == "BYTES":
            out[tensor.name] = [v.decode() for v in contents.bytes_contents]
        elif tensor.datatype == "FP32":
            out[tensor.name] = list(contents.fp32_contents)
        elif tensor.datatype == "BOOL":
            out[tensor.name] = list(contents.bool_contents)
        elif tensor.datatype == "INT32":
            out[tensor.name] = list(contents.int_contents)
        else:
            out[tensor.name] = list(contents.int64_contents)
    return out
