# fedfleet developer commands. `make demo` and `make test` are the quick start; both set up .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PY_PATHS := $(wildcard operator tests benchmarks e2e)

.PHONY: venv demo test lint typecheck importlint unit crds check-crds bench clean

venv: $(VENV)/.ready
$(VENV)/.ready: pyproject.toml .ci/venv.sh
	bash .ci/venv.sh
	touch $@

demo: venv
	rm -rf runs/demo
	$(BIN)/fedfleet run examples/mnist-fedavg.yaml --out runs/demo

test: venv lint typecheck importlint unit

lint: venv
	$(BIN)/ruff check $(PY_PATHS)
	$(BIN)/ruff format --check $(PY_PATHS)

typecheck: venv
	$(BIN)/mypy

importlint: venv
	cd operator && ../$(BIN)/lint-imports --config ../pyproject.toml

unit: venv
	$(BIN)/pytest -q -m "not e2e"

crds: venv
	$(PY) -m fedfleet.api.crd > crds/federatedjob.yaml.tmp && mv crds/federatedjob.yaml.tmp crds/federatedjob.yaml

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
