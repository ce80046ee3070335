# The two commands a new machine needs: `make run` and `make test`. Both build .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCKS := requirements.lock requirements-dev.lock
STAMP := $(VENV)/.installed-$(shell cat $(LOCKS) pyproject.toml | cksum | cut -d' ' -f1)

EMULATOR_VENV ?= .venv-emulator
EMULATOR_STAMP := $(EMULATOR_VENV)/.installed-$(shell cat requirements-emulator.lock | cksum | cut -d' ' -f1)

.PHONY: run test test-quick lint format lock clean emulator

$(STAMP): $(LOCKS) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

## run: the whole system on this machine (embedded Redis, SQLite, web, worker, beat, Flower)
run: export ORCH_ENV ?= development
run: $(STAMP)
	exec $(BIN)/orchestrator dev

## emulator: the Cloud Tasks emulator, in an environment of its own (it pins protobuf<5)
emulator: $(EMULATOR_STAMP)
$(EMULATOR_STAMP): requirements-emulator.lock
	test -x $(EMULATOR_VENV)/bin/python || $(PYTHON) -m venv $(EMULATOR_VENV)
	$(EMULATOR_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-emulator.lock
	rm -f $(EMULATOR_VENV)/.installed-* && touch $@

## test: the whole suite, starting real Redis, PostgreSQL, Celery workers and the emulator
test: $(STAMP) $(EMULATOR_STAMP)
	ORCH_TEST_EMULATOR_PYTHON=$(EMULATOR_VENV)/bin/python $(BIN)/python -m pytest

## test-quick: unit tests only (no servers)
test-quick: $(STAMP)
	$(BIN)/python -m pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy orchestrator api tasks celeryconfig.py

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## lock: re-resolve both lock files from pyproject.toml in a scratch environment
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet .
	( echo "# Runtime dependencies, locked by 'make lock' from pyproject.toml."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -v '^orchestrator' ) > requirements.lock
	.lock-venv/bin/pip install --quiet '.[dev]'
	( echo "# Development tools, locked by 'make lock'; install with requirements.lock."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -v '^orchestrator' \
	  | grep -vxF -f requirements.lock ) > requirements-dev.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) $(EMULATOR_VENV) .orchestrator .pytest_cache .mypy_cache .ruff_cache
