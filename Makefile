# The two commands: `make run` (the whole stack, demo data) and `make test` (the suite).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run run-dev test test-fast lint layers format install install-dev services test-deps clean-data help

help:
	@echo "make run    - the whole portal on this machine (web, Redis, S3, worker, beat), demo data"
	@echo "make run-dev - the same, with Django's server reloading on code changes"
	@echo "make test   - the full test suite against PostgreSQL, Redis, SeaweedFS and Chromium"
	@echo "make test-fast - the quick loop: no browsers, worker processes, whole stacks or fuzzing"
	@echo "make lint   - ruff lint and format check, and the layer order (import-linter)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamp files: reinstall only when a requirements file changes.
$(VENV)/.installed-runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(wildcard clients/python/pyproject.toml) | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.installed-runtime

install: $(VENV)/.installed-runtime
install-dev: $(VENV)/.installed-dev

# Served by gunicorn as in compose; a crashed process restarts; Ctrl-C stops the worker
# first, then web and beat, then Redis and S3 (devtools/supervisor.py).
run: install
	$(BIN)/python -m devtools.stack

# For editing code: the web process is Django's server, reloading on each change (the
# worker and beat do not reload: Ctrl-C and run again after changing tasks).
run-dev: install
	PORTAL_DEV=1 $(BIN)/python -m devtools.stack

# PostgreSQL and Redis must be up (started here when installed but stopped); Chromium for
# the browser tests comes from the system's packages.
services:
	@bash devtools/ensure_services.sh

test-deps:
	@bash devtools/ensure_chromium.sh

# The layer order in pyproject.toml ([tool.importlinter]): a module never imports from a
# layer above it.
layers: install-dev
	$(BIN)/lint-imports

test: install-dev services test-deps layers
	$(BIN)/pytest

# The quick loop while editing: no headless Chromium, no Celery worker processes, no whole
# stacks, fuzzing or demo training (marker `slow`). `make test` stays the full suite.
test-fast: install-dev services layers
	$(BIN)/pytest -m "not browser and not worker and not slow"

lint: install-dev layers
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-data:
	rm -rf var/
