#!/usr/bin/env bash
# Settings and helpers shared by kind-up.sh, smoke-test.sh and kind-down.sh (sourced, not run).
# Every setting can be overridden from the environment.

# shellcheck disable=SC2034  # used by the scripts that source this file
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_NAME="${CLUSTER_NAME:-pinrec}"
KUBE_CONTEXT="${KUBE_CONTEXT:-kind-$CLUSTER_NAME}"
NAMESPACE="${NAMESPACE:-pinrec}"
RELEASE="${RELEASE:-pinrec}"
# The InferenceService is named after the release's full name ("pinrec" for release "pinrec").
ISVC="${ISVC:-$RELEASE}"
IMAGE="${IMAGE:-pinrec:dev}"

log() { printf '\n==> %s\n' "$*"; }
die() { echo "error: $*" >&2; exit 1; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" > /dev/null || die "$tool is not on PATH"
  done
}

# helm from PATH, else the one `pinrec local install` builds.
helm_bin() {
  if [[ -n "${HELM:-}" ]]; then
    echo "$HELM"
  elif command -v helm > /dev/null; then
    command -v helm
  elif [[ -x "$root/.pinrec/tools/helm-v3.22.0/helm" ]]; then
    echo "$root/.pinrec/tools/helm-v3.22.0/helm"
  else
    die "helm is not on PATH (run 'make tools' or install helm)"
  fi
}

kc() { kubectl --context "$KUBE_CONTEXT" "$@"; }
