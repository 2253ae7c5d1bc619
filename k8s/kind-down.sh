#!/usr/bin/env bash
# Delete the kind cluster of k8s/kind-up.sh (and with it everything installed there). KEEP_CLUSTER=1 only
# uninstalls the pinrec release and deletes its namespace (its claims are kept by Helm otherwise).
set -euo pipefail
# shellcheck source=k8s/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

need kind
if ! kind get clusters | grep -qx "$CLUSTER_NAME"; then
  echo "no kind cluster named $CLUSTER_NAME"
  exit 0
fi
if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
  need kubectl
  log "uninstalling $RELEASE from $NAMESPACE"
  "$(helm_bin)" uninstall "$RELEASE" --kube-context "$KUBE_CONTEXT" --namespace "$NAMESPACE" --wait || true
  kc delete namespace "$NAMESPACE" --ignore-not-found --wait=true
else
  log "deleting kind cluster $CLUSTER_NAME"
  kind delete cluster --name "$CLUSTER_NAME"
fi
