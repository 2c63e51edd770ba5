# The front door. `make demo` and `make test` set everything up themselves on a fresh machine:
# a virtualenv with pinned packages, then the pinned Go binaries (built once, cached in
# ~/.cache/loqua-agents), then the local stack.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help venv binaries test test-unit test-integration test-cluster test-monitoring demo demo-cluster up down \
        devstack-up devstack-down status lint format bench bench-cluster clean image cluster cluster-down

help:
	@echo "make demo           set up and run the main scenario on the local stack"
	@echo "make test           set up and run the whole test suite"
	@echo "make test-unit      unit tests only (no servers)"
	@echo "make devstack-up    start the local stack (settings in .devstack/env)"
	@echo "make devstack-down  stop it"
	@echo "make up             the stack plus the operator and a tutor worker, for exploring by hand"
	@echo "make down           stop all of it"
	@echo "make image          build deploy/Dockerfile with buildah (base made from Debian's packages)"
	@echo "make cluster        the stack + a real local node + the image + the chart (release loqua, loqua-system)"
	@echo "make cluster MONITORING=1   ... plus Prometheus, Alertmanager and the pager (loqua-dev pages)"
	@echo "make demo-cluster   the main scenario on the cluster with monitoring, plus a fault that pages"
	@echo "make cluster-down   stop all of it: node, containers, mounts, bridge, stack"
	@echo "make lint           ruff check + format check"
	@echo "make bench          benchmarks against baselines measured in the same run (BENCH_ARGS=\"--scale 50000\": the 50,000 row)"
	@echo "make bench-cluster  demand scaling on the local node: time to serve 6 learners, pod-seconds (root)"

venv: $(STAMP)
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11+"; exit 1; }
	@echo "==> virtualenv $(VENV) with pinned packages (first time: about 2 minutes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip
	@$(BIN)/pip install --quiet --progress-bar off -c constraints.txt -e '.[dev]'
	@touch $@

binaries: venv
	@$(BIN)/loqua-dev build

test: venv binaries
	@echo "==> pytest (unit, then integration and e2e on the local stack)"
	@set +e; $(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test-unit: venv
	@$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: venv binaries
	@$(BIN)/pytest -m "integration or e2e or chart" $(PYTEST_ARGS)

demo: venv binaries
	@$(BIN)/python -m loqua_devstack.demo

demo-cluster: venv binaries
	@$(BIN)/python -m loqua_devstack.demo_cluster

devstack-up: venv binaries
	@$(BIN)/loqua-dev up

devstack-down: venv
	@$(BIN)/loqua-dev down

up: venv binaries
	@$(BIN)/loqua-dev up --with-agents

down: devstack-down

image: venv binaries
	@$(BIN)/loqua-dev image

cluster: venv binaries
	@$(BIN)/loqua-dev cluster $(if $(MONITORING),--monitoring)

cluster-down: venv
	@$(BIN)/loqua-dev down

test-cluster: venv binaries
	@$(BIN)/pytest -m cluster $(PYTEST_ARGS)

test-monitoring: venv binaries
	@LOQUA_MONITORING_TESTS=1 $(BIN)/pytest -m monitoring -s $(PYTEST_ARGS)

status: venv
	@$(BIN)/loqua-dev status

lint: venv
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .

format: venv
	@$(BIN)/ruff check --fix .
	@$(BIN)/ruff format .

clean:
	-@test -x $(BIN)/loqua-dev && $(BIN)/loqua-dev down
	rm -rf .devstack .pytest_cache .ruff_cache

bench: venv binaries
	@$(BIN)/python -m loqua_devstack.bench --out bench-results.md $(BENCH_ARGS)

# The cluster part of the bench (demand scaling on the local node; root): see docs in README.
bench-cluster: venv binaries
	@$(BIN)/python -m loqua_devstack.bench --only scaling --out bench-cluster-results.md
