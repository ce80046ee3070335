# The two commands a new machine needs: `make run` and `make test`. Both build .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make run` installs the runtime only; the targets that develop (test, lint, bench) add
# the development tools beside it.
RUN_STAMP := $(VENV)/.runtime-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(shell cat requirements.lock requirements-dev.lock pyproject.toml | cksum | cut -d' ' -f1)

EMULATOR_VENV ?= .venv-emulator
EMULATOR_STAMP := $(EMULATOR_VENV)/.installed-$(shell cat requirements-emulator.lock | cksum | cut -d' ' -f1)

CHROMIUM ?= /usr/bin/chromium

.PHONY: run test test-quick lint format lock clean emulator browser bench bench-quick docs

$(RUN_STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.runtime-* && touch $@

$(STAMP): $(RUN_STAMP) requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock -r requirements-dev.lock
	rm -f $(VENV)/.installed-* && touch $@

## run: the whole system on this machine (embedded PostgreSQL and Redis, web, dispatcher,
## workers, beat, Flower)
run: export ORCH_ENV ?= development
run: $(RUN_STAMP)
	exec $(BIN)/orchestrator dev

## emulator: the Cloud Tasks emulator, in an environment of its own (it pins protobuf<5)
emulator: $(EMULATOR_STAMP)
$(EMULATOR_STAMP): requirements-emulator.lock
	test -x $(EMULATOR_VENV)/bin/python || $(PYTHON) -m venv $(EMULATOR_VENV)
	$(EMULATOR_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-emulator.lock
	rm -f $(EMULATOR_VENV)/.installed-* && touch $@

## browser: Debian's Chromium, which the dashboard's browser tests drive (needs root or sudo)
browser:
	@test -x $(CHROMIUM) || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

## test: the whole suite, starting real Redis and PostgreSQL (both from wheels), Celery
## workers, the emulator and a headless Chromium
test: $(STAMP) $(EMULATOR_STAMP) browser
	ORCH_TEST_EMULATOR_PYTHON=$(EMULATOR_VENV)/bin/python ORCH_TEST_CHROMIUM=$(CHROMIUM) \
	  $(BIN)/python -m pytest

## test-quick: unit tests only (no servers)
test-quick: $(STAMP)
	$(BIN)/python -m pytest tests/unit

## bench: the benchmark suite beside raw Celery (not part of `make test`; see bench/RESULTS.md)
bench: $(STAMP)
	$(BIN)/python -m bench.run_all

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run_all --quick

# ruff formats the Python blocks of README.md and docs/*.md too.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy orchestrator api tasks bench celeryconfig.py docs/settings_table.py

## docs: the documentation site (mkdocs.yml, docs/) in site/; a warning fails the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## lock: re-resolve both lock files from pyproject.toml in a scratch environment
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet '.[dev]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^orchestrator' > .lock-all.txt
	# The runtime set is resolved within the development one, so the two locks agree
	# (an instrumentation may hold a shared package back).
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet . -c .lock-all.txt
	( echo "# Runtime dependencies, locked by 'make lock' from pyproject.toml."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -v '^orchestrator' ) > requirements.lock
	( echo "# Development tools, locked by 'make lock'; install with requirements.lock."; \
	  grep -vxF -f requirements.lock .lock-all.txt ) > requirements-dev.lock
	rm -rf .lock-venv .lock-all.txt

clean:
	rm -rf $(VENV) $(EMULATOR_VENV) .orchestrator .pytest_cache .mypy_cache .ruff_cache site
