"""The `helm test` checks, run in the pinrec image by the chart's test pods (templates/tests): what a
client of the release sees through its Services and NetworkPolicies.

    python -c "$(cat helm-test.py)" rest | grpc | consumer-metrics

rest              POST /v1/models/<surface>:predict on every served surface: HTTP 200 with items
grpc              inference.GRPCInferenceService/ModelInfer on every served surface: item_id outputs
consumer-metrics  GET the consumer's /metrics: its lag and partition gauges are exported

Everything comes from the pod's environment: PINREC_TEST_PREDICTOR_URL (REST), PINREC_TEST_PREDICTOR_GRPC
(host:port), PINREC_TEST_SURFACES (comma-separated; empty: every model the predictor lists),
PINREC_TEST_CONSUMER_METRICS_URL, PINREC_TEST_USER_ID and PINREC_TEST_TIMEOUT_SECONDS."""

import os
import sys

import requests

from pinrec.serving.client import grpc_outputs, grpc_request, grpc_stub, rest_v1

TIMEOUT_S = float(os.environ.get("PINREC_TEST_TIMEOUT_SECONDS", "30"))
# Surfaces that read a context get one, so that path is called too.
CONTEXTS = {"search": {"query_id": 17}, "related": {"subject_item_id": 1234}}
CONSUMER_GAUGES = ("pinrec_consumer_lag_messages", "pinrec_consumer_assigned_partitions")


def instance(surface: str) -> dict:
    request = {"user_id": int(os.environ.get("PINREC_TEST_USER_ID", "42")), "k": 5}
    if surface in CONTEXTS:
        request["context"] = CONTEXTS[surface]
    return request


def served_surfaces() -> list[str]:
    """The configured surfaces, each of which the predictor must list; every listed one when none is."""
    response = requests.get(f"{os.environ['PINREC_TEST_PREDICTOR_URL']}/v1/models", timeout=TIMEOUT_S)
    response.raise_for_status()
    served = response.json()["models"]
    configured = [name for name in os.environ.get("PINREC_TEST_SURFACES", "").split(",") if name]
    missing = sorted(set(configured) - set(served))
    if missing or not served:
        raise SystemExit(f"the predictor serves {served}, not the configured surfaces {missing}")
    return configured or served


def check_rest() -> None:
    base_url = os.environ["PINREC_TEST_PREDICTOR_URL"]
    for surface in served_surfaces():
        response = rest_v1(base_url, surface, [instance(surface)], timeout=TIMEOUT_S)
        if response.status_code != 200:
            raise SystemExit(f"REST {surface}: HTTP {response.status_code}: {response.text[:500]}")
        prediction = response.json()["predictions"][0]
        if not prediction["items"]:
            raise SystemExit(f"REST {surface}: no items in {prediction}")
        print(f"ok  REST v1 {surface}: {len(prediction['items'])} items, model {prediction['model_version']}")


def check_grpc() -> None:
    stub = grpc_stub(os.environ["PINREC_TEST_PREDICTOR_GRPC"])
    for surface in served_surfaces():
        response = stub.ModelInfer(grpc_request(surface, instance(surface)), timeout=TIMEOUT_S)
        items = grpc_outputs(response)["item_id"]
        if not items:
            raise SystemExit(f"gRPC {surface}: no item_id output")
        print(f"ok  gRPC ModelInfer {surface}: {len(items)} items")


def check_consumer_metrics() -> None:
    response = requests.get(os.environ["PINREC_TEST_CONSUMER_METRICS_URL"], timeout=TIMEOUT_S)
    response.raise_for_status()
    families = {line.split()[2] for line in response.text.splitlines() if line.startswith("# TYPE ")}
    missing = [name for name in CONSUMER_GAUGES if name not in families]
    if missing:
        raise SystemExit(f"the consumer's /metrics lacks {missing}")
    print(f"ok  consumer /metrics: {len(families)} metric families, {', '.join(CONSUMER_GAUGES)} among them")


CHECKS = {"rest": check_rest, "grpc": check_grpc, "consumer-metrics": check_consumer_metrics}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in CHECKS:
        raise SystemExit(f"usage: helm-test.py {' | '.join(CHECKS)}")
    CHECKS[sys.argv[1]]()
