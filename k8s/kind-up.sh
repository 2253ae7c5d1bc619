#!/usr/bin/env bash
# Create a kind cluster and run pinrec in it:
#   cert-manager and KServe (raw deployment mode) from pinned releases, optionally the prometheus-operator
#   CRDs (so the chart's PodMonitor, ServiceMonitor and PrometheusRule are created too), the image built from
#   the repository and loaded into the node, the chart installed with helm/pinrec/values-kind.yaml (built-in
#   Kafka and Redis, a small model trained after install), then wait until the predictor is Ready.
# Needs docker, kind (>= 0.24), kubectl and helm (or the project's, from `make tools`), and network access.
# Then: k8s/smoke-test.sh; tear down with k8s/kind-down.sh.
set -euo pipefail
# shellcheck source=k8s/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.31.6}"
CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-v1.17.2}"
KSERVE_VERSION="${KSERVE_VERSION:-v0.16.1}"
# KServe >= 0.16 calls raw deployment mode "Standard" (older releases: "RawDeployment").
KSERVE_DEPLOYMENT_MODE="${KSERVE_DEPLOYMENT_MODE:-Standard}"
# The release of the CRDs scripts/k8s-validate.sh checks against (../shared/k8s/crds).
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.93.0}"
INSTALL_PROMETHEUS_CRDS="${INSTALL_PROMETHEUS_CRDS:-1}"
SKIP_BUILD="${SKIP_BUILD:-0}"
TIMEOUT="${TIMEOUT:-20m}"

need docker kind kubectl
helm="$(helm_bin)"

log "kind cluster $CLUSTER_NAME ($KIND_NODE_IMAGE)"
if kind get clusters | grep -qx "$CLUSTER_NAME"; then
  echo "exists"
else
  kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" \
    --config "$root/k8s/kind-config.yaml" --wait 180s
fi

log "cert-manager $CERT_MANAGER_VERSION"
kc apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
kc -n cert-manager wait --for=condition=Available deployment --all --timeout=5m

log "KServe $KSERVE_VERSION ($KSERVE_DEPLOYMENT_MODE mode, no ingress)"
"$helm" upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd --version "$KSERVE_VERSION" \
  --kube-context "$KUBE_CONTEXT" --namespace kserve --create-namespace --wait
"$helm" upgrade --install kserve oci://ghcr.io/kserve/charts/kserve --version "$KSERVE_VERSION" \
  --kube-context "$KUBE_CONTEXT" --namespace kserve \
  --set "kserve.controller.deploymentMode=$KSERVE_DEPLOYMENT_MODE" \
  --set kserve.controller.gateway.disableIngressCreation=true \
  --wait --timeout 10m
kc -n kserve wait --for=condition=Available deployment --all --timeout=5m

monitoring=()
if [[ "$INSTALL_PROMETHEUS_CRDS" == 1 ]]; then
  log "prometheus-operator CRDs $PROMETHEUS_OPERATOR_VERSION"
  base="https://raw.githubusercontent.com/prometheus-operator/prometheus-operator/$PROMETHEUS_OPERATOR_VERSION/example/prometheus-operator-crd"
  for crd in servicemonitors podmonitors prometheusrules; do
    kc apply --server-side -f "$base/monitoring.coreos.com_$crd.yaml"
  done
  monitoring=(--set monitoring.podMonitor.enabled=true --set monitoring.serviceMonitor.enabled=true
    --set monitoring.prometheusRule.enabled=true)
fi

if [[ "$SKIP_BUILD" != 1 ]]; then
  log "image $IMAGE"
  docker build -t "$IMAGE" "$root"
fi
kind load docker-image "$IMAGE" --name "$CLUSTER_NAME"

log "helm install $RELEASE (values-kind.yaml) into namespace $NAMESPACE"
# --wait covers the broker, Redis and the consumer; the hooks then create the topics, apply the feature
# repository and train the bootstrap artifact.
"$helm" upgrade --install "$RELEASE" "$root/helm/pinrec" --kube-context "$KUBE_CONTEXT" \
  --namespace "$NAMESPACE" --create-namespace -f "$root/helm/pinrec/values-kind.yaml" \
  --set "image.repository=${IMAGE%:*}" --set "image.tag=${IMAGE##*:}" \
  "${monitoring[@]}" --wait --timeout "$TIMEOUT"

log "waiting for InferenceService $ISVC"
kc -n "$NAMESPACE" wait --for=condition=Ready "inferenceservice/$ISVC" --timeout="$TIMEOUT"
kc -n "$NAMESPACE" get inferenceservice,pods,svc

log "ready: run k8s/smoke-test.sh"
