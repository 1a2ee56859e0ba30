# fedfleet developer commands. `make demo` and `make test` are the quick start; both set up .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PY_PATHS := $(wildcard operator tests benchmarks e2e)

.PHONY: venv demo test lint typecheck importlint unit e2e crds bench clean cluster-build cluster-up cluster-down

venv: $(VENV)/.ready
$(VENV)/.ready: pyproject.toml .ci/venv.sh
	bash .ci/venv.sh
	touch $@

demo: venv
	rm -rf runs/demo
	$(BIN)/fedfleet run examples/mnist-fedavg.yaml --out runs/demo

test: venv lint typecheck importlint unit e2e

lint: venv
	$(BIN)/ruff check $(PY_PATHS)
	$(BIN)/ruff format --check $(PY_PATHS)

typecheck: venv
	$(BIN)/mypy
	cd e2e/controlplane && ../../$(BIN)/mypy --strict cluster.py
	cd e2e/nodeagent && ../../$(BIN)/mypy --strict *.py

importlint: venv
	cd operator && ../$(BIN)/lint-imports --config ../pyproject.toml

unit: venv
	$(BIN)/pytest -q -m "not e2e" tests/unit tests/integration

# The real control plane: etcd, kube-apiserver, kube-controller-manager, kubectl and helm built from Go
# modules, cached by version under ~/.cache/fedfleet/controlplane (a cold build takes about 12 minutes).
CLUSTER_STATE ?= .cluster

cluster-build:
	bash e2e/controlplane/build.sh

cluster-up: venv cluster-build
	$(PY) e2e/controlplane/cluster.py up --state-dir $(CLUSTER_STATE) --node-agent

cluster-down: venv
	$(PY) e2e/controlplane/cluster.py down --state-dir $(CLUSTER_STATE)

e2e: venv cluster-build
	$(BIN)/pytest -q -m e2e tests/e2e

crds: venv
	$(PY) -m fedfleet.api.crd > crds/federatedjob.yaml.tmp && mv crds/federatedjob.yaml.tmp crds/federatedjob.yaml

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
