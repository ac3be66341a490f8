# s2s-queue: build, run and check.
#
#   make run     local broker + the daemon with examples/demo.toml
#   make test    ruff, mypy and pytest against the local broker (and headless chromium)
#   make check   ruff and mypy only (no broker needed)
#   make bench   the blocking- and non-blocking-queue benchmarks (+ Celery, Dramatiq)
#   make model   check the park protocol's Promela models with SPIN (model/README.md)
#   make fuzz    the fuzz campaign, long: 10,000 hostile items, 2,000 bad control messages
#   make cluster-test  three local RabbitMQ nodes (5681-5683), the failover scenarios, then remove them
#   make clean   remove the virtualenv and caches
#
# PYTEST_ARGS is passed to pytest, e.g. make test PYTEST_ARGS='-k parking -x'.
# PYTHON picks the interpreter the virtualenv is made from (python3.11 or newer).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install: pip runs again only when pyproject.toml
# is newer, or the virtualenv is new.
STAMP := $(VENV)/.installed
# The same for the bench extra (Celery, Dramatiq): `make test` does not need it.
BENCH_STAMP := $(VENV)/.installed-bench
CONFIG := examples/demo.toml
PYTEST_ARGS ?=

.PHONY: help venv broker browser run test check bench model fuzz cluster-test clean

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

venv: $(STAMP)

broker:
	scripts/ensure-rabbitmq.sh

browser:
	scripts/ensure-chromium.sh

run: venv broker
	@echo
	@echo "  s2s-queue demo (settings: $(CONFIG), clients: examples/clients.toml)"
	@echo "  API and console  http://127.0.0.1:8080/   admin token: demo-admin-token"
	@echo "  Publish a first item, from another terminal:"
	@echo "    $(BIN)/s2s-queue --config $(CONFIG) publish --client acme --type system.noop --payload '{}'"
	@echo "    $(BIN)/s2s-queue --config $(CONFIG) status acme"
	@echo "    curl -H 'Authorization: Bearer demo-admin-token' http://127.0.0.1:8080/api/v1/clients"
	@echo "  Stop with Ctrl-C."
	@echo
	exec $(BIN)/s2s-queue --config $(CONFIG) run

test: venv broker browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

check: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(BENCH_STAMP) broker
	$(BIN)/python bench/blocking.py
	$(BIN)/python bench/nonblocking.py

model:
	scripts/ensure-spin.sh
	model/run.sh

# `make test` runs the same campaign with 1,000 items and 500 control messages.
FUZZ_ITEMS ?= 10000
FUZZ_CONTROL ?= 2000
FUZZ_SEED ?= 20261129
fuzz: venv broker
	FUZZ_ITEMS=$(FUZZ_ITEMS) FUZZ_CONTROL=$(FUZZ_CONTROL) FUZZ_SEED=$(FUZZ_SEED) \
		$(BIN)/pytest -q -s tests/e2e/test_fuzz_campaign.py

# Not part of `make test` (.ci/run runs it after): about 3 minutes and three extra brokers
# (docs/cluster.md).
# KEEP_CLUSTER=1 leaves the nodes running for the next run (`scripts/rabbitmq-cluster.sh down`).
KEEP_CLUSTER ?=
cluster-test: venv
	scripts/rabbitmq-cluster.sh up >/dev/null
	status=0; $(BIN)/pytest -m cluster tests/cluster $(PYTEST_ARGS) || status=$$?; \
		[[ -n "$(KEEP_CLUSTER)" ]] || scripts/rabbitmq-cluster.sh down; exit $$status

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
