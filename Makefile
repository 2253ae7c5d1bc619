# The two commands of the README do all the set-up on a fresh machine:
#   make demo   provision everything, then run the end-to-end demo on embedded defaults
#   make test   provision everything, then lint and run the whole test suite against real services
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
UV_VERSION := 0.13.9
BIN := $(VENV)/bin
PYTEST_ARGS ?=
export PINREC_HOME ?= $(CURDIR)/.pinrec

.PHONY: setup tools k8s-tools demo test lint k8s-validate k8s-e2e gpu-check lock local-up local-down clean

# Python environment from the lock file (uv is pinned and itself in the lock's dev extra).
$(VENV)/.synced: requirements.lock pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip sync -q --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $@

# Kafka jars (Maven Central), Redis and Prometheus (apt), helm and kubeconform (go install); idempotent.
tools: $(VENV)/.synced
	$(BIN)/pinrec local install

setup: tools

# A live control plane's binaries (kube-apiserver, controller-manager, scheduler, etcd, kwok), built from the Go
# module proxy: about 9 minutes cold on 2 cores, seconds once built. The tests install the chart on it.
k8s-tools: tools
	$(BIN)/pinrec local install --k8s

demo: setup
	$(BIN)/pinrec demo --no-install

lint: $(VENV)/.synced
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Offline checks of everything deployed to Kubernetes (no cluster, no network): helm lint/template with every
# values file, kubeconform -strict against local schemas, promtool check rules, shellcheck.
k8s-validate: tools
	bash scripts/k8s-validate.sh

# The chart installed, tested, upgraded and uninstalled on a private live API server (k8s/e2e.sh); no Docker.
k8s-e2e: k8s-tools
	bash k8s/e2e.sh

# Training on GPUs, on a machine where torch sees one (never part of `make test`): equality with the CPU run,
# tokens/s against the CPU in the same run, Beauty quality at d=256 (scripts/gpu-check.sh).
gpu-check: setup
	bash scripts/gpu-check.sh

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
test: setup lint k8s-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Re-resolve the lock file after changing dependencies in pyproject.toml.
lock: $(VENV)/.synced
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o requirements.lock

local-up: setup
	$(BIN)/pinrec local up

local-down: $(VENV)/.synced
	$(BIN)/pinrec local down

clean: local-down
	rm -rf $(VENV) .pinrec demo-report
