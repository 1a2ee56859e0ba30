# fedfleet developer commands. `make demo` and `make test` are the quick start; both set up .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PY_PATHS := $(wildcard operator tests benchmarks e2e)

.PHONY: venv demo test lint typecheck importlint unit e2e crds bench clean cluster-build cluster-up cluster-down \
	prometheus-build argocd-health gitops-examples

venv: $(VENV)/.ready
$(VENV)/.ready: pyproject.toml .ci/venv.sh
	bash .ci/venv.sh
	touch $@

# Train the quick-start model, then roll it out to a simulated fleet of 500 devices (the rollout runs in simulated
# time: its four minutes take seconds).
demo: venv
	rm -rf runs/demo
	$(BIN)/fedfleet run examples/mnist-fedavg.yaml --out runs/demo
	$(BIN)/fedfleet rollout examples/rollout.yaml --model runs/demo/model.pt --out runs/demo/rollout

test: venv lint typecheck importlint unit e2e

lint: venv
	$(BIN)/ruff check $(PY_PATHS)
	$(BIN)/ruff format --check $(PY_PATHS)

typecheck: venv
	$(BIN)/mypy
	cd e2e/controlplane && ../../$(BIN)/mypy --strict cluster.py prometheus_config.py
	cd e2e/nodeagent && ../../$(BIN)/mypy --strict *.py

importlint: venv
	cd operator && ../$(BIN)/lint-imports --config ../pyproject.toml

# Two xdist workers (measured on 2 cores: the stage takes about two thirds of the serial time, idle and beside
# stress-ng --cpu 2); tests that must not run side by side share an xdist_group. UNIT_WORKERS=0 runs serially.
UNIT_WORKERS ?= 2

# The rule tests run promtool: it is built first, so a cold build never counts against a test's timeout.
unit: venv prometheus-build
	$(BIN)/pytest -q -m "not e2e" -n $(UNIT_WORKERS) --dist loadgroup tests/unit tests/integration

# The real control plane: etcd, kube-apiserver, kube-controller-manager, kubectl and helm built from Go
# modules, cached by version under $FEDFLEET_CACHE/controlplane (a cold build takes about 12 minutes).
CLUSTER_STATE ?= .cluster
# As the build scripts read it: $FEDFLEET_CACHE when set and not empty, else ~/.cache/fedfleet.
CACHE_DIR = $(or $(FEDFLEET_CACHE),$(HOME)/.cache/fedfleet)
# build.sh names the version it builds; the bin directory is keyed by it.
K8S_VERSION := $(shell sed -n 's/^K8S_VERSION=//p' e2e/controlplane/build.sh)
CP_BIN = $(CACHE_DIR)/controlplane/$(K8S_VERSION)/bin

cluster-build: prometheus-build
	FEDFLEET_CACHE=$(CACHE_DIR) bash e2e/controlplane/build.sh

# Prometheus and promtool with Kubernetes service discovery, built from Go modules, cached by version under
# $FEDFLEET_CACHE/prometheus (a cold build takes 5 to 15 minutes).
prometheus-build:
	FEDFLEET_CACHE=$(CACHE_DIR) bash e2e/prometheus/build.sh

# A local cluster with Prometheus and the operator installed by helm; export the KUBECONFIG it prints to use
# kubectl, and FEDFLEET_PROMETHEUS for Prometheus' UI and API.
# The node agent resolves no Service names: the gateway pod gets a fixed address of its pod CIDR (127.0.10.0/24),
# which aggregators are told. No storage provisioner either: the gateway keeps its artifacts in an emptyDir.
GATEWAY_IP ?= 127.0.10.254

cluster-up: venv cluster-build
	FEDFLEET_CACHE=$(CACHE_DIR) $(PY) e2e/controlplane/cluster.py up --state-dir $(CLUSTER_STATE) --node-agent \
	  --prometheus
	HELM_CACHE_HOME=$(CLUSTER_STATE)/helm HELM_CONFIG_HOME=$(CLUSTER_STATE)/helm HELM_DATA_HOME=$(CLUSTER_STATE)/helm \
	  $(CP_BIN)/helm --kubeconfig $(CLUSTER_STATE)/kubeconfig upgrade --install fedfleet charts/fedfleet \
	  -n fedfleet-system --create-namespace --wait \
	  --set prometheus.address=$$(cat $(CLUSTER_STATE)/prometheus/address) \
	  --set gateway.storage.kind=emptyDir \
	  --set 'gateway.podAnnotations.nodeagent\.fedfleet\.io/pod-ip=$(GATEWAY_IP)' \
	  --set gateway.address=$(GATEWAY_IP):7443
	@echo "export KUBECONFIG=$(abspath $(CLUSTER_STATE))/kubeconfig PATH=$(CP_BIN):\$$PATH" \
	  "FEDFLEET_PROMETHEUS=$$(cat $(CLUSTER_STATE)/prometheus/address)"

cluster-down: venv
	$(PY) e2e/controlplane/cluster.py down --state-dir $(CLUSTER_STATE)

e2e: venv cluster-build
	$(BIN)/pytest -q -m e2e tests/e2e

# Generated files: each has a test that fails when the committed copy differs from a fresh generation.
CRDS := federatedjob modelrollout

crds: venv
	for crd in $(CRDS); do \
	  $(PY) -m fedfleet.api.crd $$crd > crds/$$crd.yaml.tmp && mv crds/$$crd.yaml.tmp crds/$$crd.yaml \
	    && cp crds/$$crd.yaml charts/fedfleet/crds/$$crd.yaml || exit 1; \
	done

proto: venv
	$(PY) -m fedfleet.proto.generate

# Argo CD health checks: the argocd-cm entries users merge, rendered from charts/fedfleet/files/argocd/*/health.lua.
argocd-health: venv
	$(PY) charts/render_argocd_health.py > examples/gitops/argocd-cm-health.yaml.tmp \
	  && mv examples/gitops/argocd-cm-health.yaml.tmp examples/gitops/argocd-cm-health.yaml

# examples/gitops holds copies of the cluster examples: kustomize refuses files outside a kustomization's folder.
gitops-examples: argocd-health
	cp examples/federatedjob-cluster.yaml examples/gitops/federatedjob.yaml
	cp examples/rollout-cluster.yaml examples/gitops/modelrollout.yaml

bench-operator: venv cluster-build
	$(PY) benchmarks/bench_operator_apply_to_running.py

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
