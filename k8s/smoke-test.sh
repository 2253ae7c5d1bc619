#!/usr/bin/env bash
# Call the predictor of a running install (k8s/kind-up.sh) through a port-forward: the health route, REST
# v1 and v2 for every surface, an invalid request (must be 400), /metrics, and gRPC v2 with grpcurl when it
# is installed (descriptors taken from the image, which has KServe's protobufs) and with the project's own
# client inside the predictor pod. Exits non-zero on the first failure.
set -euo pipefail
# shellcheck source=k8s/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HTTP_PORT="${HTTP_PORT:-18080}"
GRPC_PORT="${GRPC_PORT:-18081}"
USER_ID="${USER_ID:-42}"
need kubectl curl

work="$(mktemp -d)"
pf_pid=""
cleanup() {
  if [[ -n "$pf_pid" ]]; then
    kill "$pf_pid" 2> /dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

deployment="deployment/$ISVC-predictor"
log "predictor $ISVC in namespace $NAMESPACE"
kc -n "$NAMESPACE" wait --for=condition=Ready "inferenceservice/$ISVC" --timeout=10m

kc -n "$NAMESPACE" port-forward "$deployment" "$HTTP_PORT:8080" "$GRPC_PORT:8081" > "$work/port-forward.log" 2>&1 &
pf_pid=$!
base="http://127.0.0.1:$HTTP_PORT"
for _ in {1..60}; do
  if curl -fsS --max-time 2 "$base/v2/health/ready" > /dev/null 2>&1; then
    break
  fi
  kill -0 "$pf_pid" 2> /dev/null || die "port-forward ended: $(cat "$work/port-forward.log")"
  sleep 1
done
curl -fsS --max-time 5 "$base/v2/health/ready" > /dev/null || die "$base/v2/health/ready never answered"
curl -fsS --max-time 5 "$base/v2/health/live" > /dev/null || die "$base/v2/health/live failed"
echo "health: ready and live"

# post URL BODY EXPECTED...: POST JSON, require HTTP 200 and every EXPECTED string in the answer.
post() {
  local url="$1" body="$2" response
  shift 2
  response="$(curl -fsS --max-time 30 -H 'Content-Type: application/json' -d "$body" "$url")" \
    || die "POST $url failed (body: $body)"
  local expected
  for expected in "$@"; do
    [[ "$response" == *"$expected"* ]] || die "POST $url: no $expected in: ${response:0:500}"
  done
  echo "ok  POST ${url#"$base"}"
}

context_v1() {
  case "$1" in
    search) echo ', "context": {"query_id": 17}' ;;
    related) echo ', "context": {"subject_item_id": 1234}' ;;
    *) echo "" ;;
  esac
}
context_v2() {
  case "$1" in
    search) echo ', {"name": "query_id", "datatype": "INT64", "shape": [1], "data": [17]}' ;;
    related) echo ', {"name": "subject_item_id", "datatype": "INT64", "shape": [1], "data": [1234]}' ;;
    *) echo "" ;;
  esac
}

log "REST v1 and v2"
for surface in home search related; do
  post "$base/v1/models/$surface:predict" \
    "{\"instances\": [{\"user_id\": $USER_ID, \"k\": 10$(context_v1 "$surface")}]}" \
    '"predictions"' '"item_id"' '"model_version"'
  post "$base/v2/models/$surface/infer" \
    "{\"inputs\": [{\"name\": \"user_id\", \"datatype\": \"INT64\", \"shape\": [1], \"data\": [$USER_ID]}$(context_v2 "$surface")]}" \
    '"outputs"' '"item_id"'
done

status="$(curl -s -o "$work/invalid.json" -w '%{http_code}' --max-time 10 -H 'Content-Type: application/json' \
  -d '{"instances": [{"user_id": 1, "k": -1}]}' "$base/v1/models/home:predict")"
[[ "$status" == 400 ]] || die "an invalid request got HTTP $status instead of 400: $(cat "$work/invalid.json")"
echo "ok  invalid request -> 400"

metrics="$(curl -fsS --max-time 10 "$base/metrics")" || die "$base/metrics failed"
for name in pinrec_requests_total pinrec_request_stage_seconds_bucket pinrec_model_info; do
  [[ "$metrics" == *"$name"* ]] || die "/metrics lacks $name"
done
echo "ok  /metrics"

log "gRPC v2"
pod="$(kc -n "$NAMESPACE" get pods -l "serving.kserve.io/inferenceservice=$ISVC" \
  --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}')"
[[ -n "$pod" ]] || die "no running predictor pod"
kc -n "$NAMESPACE" exec "$pod" -c kserve-container -- python -c "
from pinrec.serving.client import grpc_outputs, grpc_request, grpc_stub
stub = grpc_stub('127.0.0.1:8081')
for surface, context in [('home', {}), ('search', {'query_id': 17}), ('related', {'subject_item_id': 1234})]:
    outputs = grpc_outputs(stub.ModelInfer(grpc_request(surface, {'user_id': $USER_ID, 'k': 10, 'context': context})))
    assert len(outputs['item_id']) > 0, surface
    print('ok  gRPC (in-pod client)', surface, list(outputs['item_id'])[:5])
" || die "gRPC through the in-pod client failed"

if command -v grpcurl > /dev/null; then
  # KServe's gRPC server has no reflection: hand grpcurl the descriptors compiled into the image.
  kc -n "$NAMESPACE" exec "$pod" -c kserve-container -- python -c "
import sys
from google.protobuf import descriptor_pb2
from kserve.protocol.grpc import grpc_predict_v2_pb2
files = descriptor_pb2.FileDescriptorSet()
grpc_predict_v2_pb2.DESCRIPTOR.CopyToProto(files.file.add())
sys.stdout.buffer.write(files.SerializeToString())
" > "$work/predict_v2.protoset"
  for surface in home search related; do
    case "$surface" in
      search) extra=', {"name": "query_id", "datatype": "INT64", "shape": [1], "contents": {"int64_contents": [17]}}' ;;
      related) extra=', {"name": "subject_item_id", "datatype": "INT64", "shape": [1], "contents": {"int64_contents": [1234]}}' ;;
      *) extra="" ;;
    esac
    response="$(grpcurl -plaintext -protoset "$work/predict_v2.protoset" -d "{\"model_name\": \"$surface\", \"inputs\": [
      {\"name\": \"user_id\", \"datatype\": \"INT64\", \"shape\": [1], \"contents\": {\"int64_contents\": [$USER_ID]}}$extra]}" \
      "127.0.0.1:$GRPC_PORT" inference.GRPCInferenceService/ModelInfer)" || die "grpcurl ModelInfer $surface failed"
    [[ "$response" == *'"item_id"'* ]] || die "grpcurl $surface: no item_id in: ${response:0:500}"
    echo "ok  gRPC (grpcurl) $surface"
  done
else
  echo "grpcurl not installed: gRPC checked with the in-pod client only"
fi

log "smoke test passed"
