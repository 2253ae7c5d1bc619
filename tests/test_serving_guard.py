"""A real `pinrec serve` against hostile and odd requests: every refusal is a 4xx naming what is wrong (not a
500), logged as one warning and counted; bodies are capped before they are parsed; work per request is
capped and late answers become 504 / DEADLINE_EXCEEDED; nobody can unload a surface; the server listens on
the interface it is told."""

from __future__ import annotations

import json
import socket
import struct

import grpc
import pytest
import requests
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from pinrec.featurestore.store import FeatureStoreSettings
from pinrec.localstack.processes import pick_port
from pinrec.serving.client import grpc_request, grpc_stub
from tests.helpers import cli_env
from tests.serving_helpers import (
    Served,
    small_world,
    start_server,
    stop_server,
    store_sequences,
    train_artifacts,
)

pytestmark = pytest.mark.integration

METRICS_PORT_FLAG = "--metrics-port"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    data = small_world()
    link = root / "current"
    link.symlink_to(train_artifacts(data, root, versions=1)[0])
    features = FeatureStoreSettings(repo_dir=root / "repo")
    return root, data, link, features, store_sequences(data, features)


def _start(world, name: str, extra: tuple[str, ...] = ()) -> Served:
    root, data, link, features, users = world
    server = Served(data, link, [link], features, users, "", "")
    start_server(server, cli_env(root / f"state-{name}"), root / f"{name}.log", extra)
    return server


@pytest.fixture(scope="module")
def served(world):
    server = _start(world, "default")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def strict(world):
    """Every answer is late (1 ms deadline), bodies are capped at 64 KiB, /metrics has a port of its own."""
    metrics_port = pick_port(0)
    server = _start(
        world,
        "strict",
        ("--request-timeout-ms", "1", "--max-request-bytes", "65536", METRICS_PORT_FLAG, str(metrics_port)),
    )
    server.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    yield server
    stop_server(server)


def _tensor(name: str, datatype: str, data: list, shape: list | None = None) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


def _v2(served, inputs: list[dict], **kwargs) -> requests.Response:
    return requests.post(f"{served.http}/v2/models/home/infer", json={"inputs": inputs}, timeout=30, **kwargs)


def _counter(served_metrics_text: str, status: str) -> float:
    name = f'pinrec_requests_total{{status="{status}",surface="home"}}'
    lines = [line for line in served_metrics_text.splitlines() if line.startswith(name)]
    return float(lines[0].split()[-1]) if lines else 0.0


def _metrics(served) -> str:
    return requests.get(f"{served.http}/metrics", timeout=10).text


# --- content types ---------------------------------------------------------------------------------------

CONTENT_TYPES = [
    None,  # what curl -d sends: application/x-www-form-urlencoded
    "application/json; charset=utf-8",
    "Application/JSON",
    "text/plain",
    "",
]


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_a_json_body_is_read_as_json_whatever_its_content_type(served, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    v1 = {"instances": [{"user_id": served.users[0], "k": 5}]}
    v2 = {"inputs": [_tensor("user_id", "INT64", [served.users[0]]), _tensor("k", "INT64", [5])]}
    if content_type is None:
        headers["content-type"] = "application/x-www-form-urlencoded"
    for path, body in (("/v1/models/home:predict", v1), ("/v2/models/home/infer", v2)):
        response = requests.post(served.http + path, data=json.dumps(body), headers=headers, timeout=30)
        assert response.status_code == 200, (path, response.text)


def test_a_body_that_is_not_json_gets_400(served):
    for path in ("/v1/models/home:predict", "/v2/models/home/infer"):
        response = requests.post(served.http + path, data=b"user_id=1&k=5", timeout=30)
        assert response.status_code == 400, response.text


# --- strict v2 tensors -----------------------------------------------------------------------------------

MISTYPED_V2 = [
    ([_tensor("user_id", "INT64", [1000.5])], "user_id"),
    ([_tensor("user_id", "INT64", ["1000"])], "user_id"),
    ([_tensor("user_id", "INT64", [True])], "user_id"),
    ([_tensor("user_id", "INT64", [1]), _tensor("k", "INT64", [2.9])], "k"),
    ([_tensor("history_items", "INT64", [1.5, 2.5])], "history_items"),
    (
        [
            _tensor("user_id", "INT64", [1]),
            _tensor("outcomes", "BYTES", ["save", "click"]),
            _tensor("shares", "FP32", ["0.6", "0.4"]),
        ],
        "shares",
    ),
    ([_tensor("user_id", "INT64", [1, 2], shape=[1])], "user_id"),
    ([_tensor("user_id", "INT64", [1], shape=[2])], "user_id"),
    ([_tensor("user_id", "INT64", [[1]], shape=[1, 1])], None),  # nested row-major data is fine
    ([_tensor("user_id", "INT32", [2**40])], "user_id"),
    ([_tensor("outcomes", "BYTES", [5]), _tensor("shares", "FP32", [1.0]), _tensor("user_id", "INT64", [1])],
     "outcomes"),
]  # fmt: skip


@pytest.mark.parametrize(("inputs", "field"), MISTYPED_V2)
def test_v2_tensors_are_checked_as_strictly_as_v1(served, inputs, field):
    response = _v2(served, inputs)
    if field is None:
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]


def test_a_malformed_v2_body_gets_a_short_400_that_does_not_echo_it(served):
    inputs = [{"name": "user_id", "datatype": "INT64", "shape": "one", "data": ["x" * 1000] * 2000}]
    response = _v2(served, inputs)
    assert response.status_code == 400
    assert "shape" in response.json()["error"] and len(response.content) < 2_000


# --- the binary-data extension ---------------------------------------------------------------------------


def _binary(served, inputs: list[dict], binary: bytes, json_length: str | None = None) -> requests.Response:
    head = json.dumps({"inputs": inputs}).encode()
    length = str(len(head)) if json_length is None else json_length
    return requests.post(
        f"{served.http}/v2/models/home/infer",
        data=head + binary,
        headers={"inference-header-content-length": length, "content-type": "application/octet-stream"},
        timeout=30,
    )


def _raw(name: str, datatype: str, shape: list, size: int) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def _bytes_tensor(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def test_binary_data_that_adds_up_is_answered(served):
    user = struct.pack("<q", served.users[0])
    outcome = _bytes_tensor(b"save")
    inputs = [
        _raw("user_id", "INT64", [1], 8),
        _raw("outcomes", "BYTES", [1], len(outcome)),
        _tensor("shares", "FP32", [1.0]),
    ]
    response = _binary(served, inputs, user + outcome)
    assert response.status_code == 200, response.text


WITH_RAW_OUTCOMES = [
    _tensor("user_id", "INT64", [1]),
    _raw("outcomes", "BYTES", [1], 6),
    _tensor("shares", "FP32", [1.0]),
]
BROKEN_BINARY = [
    ([_raw("user_id", "INT64", [1], 8)], struct.pack("<q", 1), "abc", "inference-header-content-length"),
    ([_raw("user_id", "INT64", [1], 8)], struct.pack("<q", 1), "99999", "inference-header-content-length"),
    ([_raw("user_id", "INT64", [1], 3)], b"abc", None, "user_id"),
    ([_raw("user_id", "INT64", [1], -8)], struct.pack("<q", 1), None, "user_id"),
    ([_raw("user_id", "INT64", [1], 8)], struct.pack("<q", 1) + b"extra", None, "binary data"),
    (WITH_RAW_OUTCOMES, _bytes_tensor(b"\xff\xfe"), None, "UTF-8"),
    (WITH_RAW_OUTCOMES, struct.pack("<I", 50) + b"ab", None, "outcomes"),
]  # fmt: skip


@pytest.mark.parametrize(("inputs", "binary", "json_length", "named"), BROKEN_BINARY)
def test_broken_binary_data_gets_400_naming_the_problem(served, inputs, binary, json_length, named):
    response = _binary(served, inputs, binary, json_length)
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]


# --- the model repository ---------------------------------------------------------------------------------


def test_no_caller_can_unload_or_load_a_surface(served):
    for action in ("unload", "load"):
        response = requests.post(f"{served.http}/v2/repository/models/related/{action}", timeout=10)
        assert response.status_code == 403 and "disabled" in response.json()["error"]
    unknown = requests.post(f"{served.http}/v2/repository/models/checkout/load", timeout=10)
    assert unknown.status_code == 404
    stub = grpc_stub(served.grpc)
    with pytest.raises(grpc.RpcError) as refused:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="related"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as missing:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="checkout"), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert requests.get(f"{served.http}/v2/models/related/ready", timeout=10).status_code == 200
    assert stub.ModelReady(pb.ModelReadyRequest(name="related"), timeout=10).ready
    answer = requests.post(
        f"{served.http}/v1/models/related:predict",
        json={"instances": [{"user_id": served.users[0]}]},
        timeout=30,
    )
    assert answer.status_code == 200
    assert (
        "model_repository_extension" not in requests.get(f"{served.http}/v2", timeout=10).json()["extensions"]
    )


# --- size, logging, work and deadlines ---------------------------------------------------------------------


def test_a_body_over_the_limit_gets_413_before_it_is_parsed(served, strict):
    big = b'{"instances": [' + b"1," * 3_000_000 + b"1]}"  # 6 MB: over the default 4 MiB
    response = requests.post(f"{served.http}/v1/models/home:predict", data=big, timeout=30)
    assert response.status_code == 413 and len(response.content) < 500
    chunked = requests.post(
        f"{strict.http}/v1/models/home:predict", data=(b"1" * 10_000 for _ in range(20)), timeout=30
    )
    assert chunked.status_code == 413
    message = grpc_request("home", {"user_id": 1})
    message.inputs.add(name="padding", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"x" * 70_000
    )
    with pytest.raises(grpc.RpcError) as too_large:
        grpc_stub(strict.grpc).ModelInfer(message, timeout=30)
    assert too_large.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert requests.get(f"{served.http}/v2/health/live", timeout=5).status_code == 200


def test_a_client_waiting_for_100_continue_gets_413_without_sending_the_body(served):
    host, port = served.http.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            b"POST /v1/models/home:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 6000000\r\nExpect: 100-continue\r\n\r\n"
        )
        answer = connection.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_refusal_is_one_warning_without_traceback_and_is_counted(served):
    before = _counter(_metrics(served), "invalid")
    log_size = served.process.log_path.stat().st_size
    response = _v2(served, [_tensor("user_id", "INT64", ["not a number"])])
    assert response.status_code == 400
    logged = served.process.log_path.read_text()[log_size:]
    assert "WARNING" in logged and "user_id" in logged
    assert "Traceback" not in logged and "ERROR" not in logged
    assert _counter(_metrics(served), "invalid") == before + 1


def test_work_per_request_is_capped(served):
    heavy = {"user_id": served.users[0], "k": 1000, "steps": 16, "budget": {"save": 0.5, "click": 0.5}}
    response = requests.post(
        f"{served.http}/v1/models/home:predict", json={"instances": [heavy] * 64}, timeout=30
    )
    assert response.status_code == 400 and "generated queries" in response.json()["error"]
    many = {"user_id": served.users[0], "k": 1000, "steps": 1}
    response = requests.post(
        f"{served.http}/v1/models/home:predict", json={"instances": [many] * 11}, timeout=30
    )
    assert response.status_code == 400 and "sum of k" in response.json()["error"]


def test_a_late_answer_is_504_and_deadline_exceeded(strict):
    instance = {"user_id": strict.users[0], "k": 50, "steps": 4}
    before = requests.get(strict.metrics, timeout=10).text
    response = requests.post(
        f"{strict.http}/v1/models/home:predict", json={"instances": [instance]}, timeout=30
    )
    assert response.status_code == 504 and "request-timeout-ms" in response.json()["error"]
    with pytest.raises(grpc.RpcError) as late:
        grpc_stub(strict.grpc).ModelInfer(grpc_request("home", instance), timeout=30)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    after = requests.get(strict.metrics, timeout=10).text
    assert _counter(after, "timeout") >= _counter(before, "timeout") + 2


def test_the_server_listens_on_loopback_only_by_default(served):
    # Linux routes all of 127.0.0.0/8 to the loopback interface: a server bound to 127.0.0.1 alone is not
    # reachable at 127.0.0.2, one bound to every interface is.
    for address in (served.http.rsplit(":", 1)[1], served.grpc.rsplit(":", 1)[1]):
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", int(address)), 2):
            pass


def test_endpoints_not_offered_are_404_not_5xx(served):
    v2 = {"inputs": [_tensor("user_id", "INT64", [served.users[0]])]}
    calls = [
        ("post", "/v1/models/home:explain", {"instances": [{"user_id": 1}]}),
        ("post", "/v2/models/home/versions/3/infer", v2),
        ("get", "/v2/models/home/versions/3", None),
        ("get", "/v2/models/home/versions/3/ready", None),
    ]
    for method, path, body in calls:
        response = getattr(requests, method)(served.http + path, json=body, timeout=30)
        assert response.status_code == 404, (path, response.text)
    versioned = grpc_request("home", {"user_id": served.users[0]})
    versioned.model_version = "3"
    with pytest.raises(grpc.RpcError) as missing:
        grpc_stub(served.grpc).ModelInfer(versioned, timeout=30)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_body_too_deep_to_parse_is_400_with_an_error_field(served):
    deep = b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    for path in ("/v2/models/home/infer", "/v1/models/home:predict"):
        response = requests.post(served.http + path, data=deep, timeout=30)
        assert response.status_code == 400 and "error" in response.json()


def test_grpc_raw_bytes_are_checked_like_rest_binary_data(served):
    request = pb.ModelInferRequest(model_name="home")
    request.inputs.add(name="user_id", datatype="INT64", shape=[1])
    request.inputs.add(name="outcomes", datatype="BYTES", shape=[1])
    request.inputs.add(name="shares", datatype="FP32", shape=[1])
    raw = [struct.pack("<q", 1), _bytes_tensor(b"\xff\xfe"), struct.pack("<f", 1.0)]
    request.raw_input_contents.extend(raw)
    with pytest.raises(grpc.RpcError) as refused:
        grpc_stub(served.grpc).ModelInfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outcomes[0] is not valid UTF-8" in refused.value.details()
