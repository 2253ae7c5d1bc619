#!/usr/bin/env bash
# The chart against a live API server, without Docker: a private control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, and kwok for fake nodes) on free 127.0.0.1 ports; CRDs; the release
# namespace at Pod Security `restricted`; helm install (kind + monitoring values), helm test, helm upgrade
# (production-like values, a new model URI), helm uninstall; everything stopped, also when interrupted.
# Binaries: `pinrec local install --k8s` (make k8s-e2e builds them when missing). Options: pinrec local k8s-e2e -h
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
[[ -x .venv/bin/pinrec ]] || { echo "error: no .venv here: run make setup first" >&2; exit 1; }
exec .venv/bin/pinrec local k8s-e2e "$@"
