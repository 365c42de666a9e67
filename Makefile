# hyperbytedb-proxy: every command sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test unit lint format run bench chaos deps docs chart-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

## demo: a local three-node simulated HyperbyteDB cluster behind the proxy on 127.0.0.1:8086
demo: $(VENV)/.installed
	$(PY) -m sim.cluster

## test: the whole suite (unit, integration, deployment, short fault runs, benchmark smoke)
test: $(VENV)/.installed deps
	$(PY) -m pytest

## unit: the fast suite only (seconds)
unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

deps:
	bash scripts/install-test-deps.sh

## lint: ruff, ruff format --check, mypy (strict on app/)
lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(VENV)/.installed
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

## run: the proxy with the environment's HYPERBYTEDB_PROXY_* settings
run: $(VENV)/.installed
	$(PY) -m app

## bench: side-by-side benchmark against nginx and the backend alone
bench: $(VENV)/.installed deps
	$(PY) -m bench

## chaos: the full-length fault suite (rolling restarts, crashes, outages)
chaos: $(VENV)/.installed deps
	$(PY) -m chaos

## docs: regenerate the configuration reference and build the site into site/
docs: $(VENV)/.installed
	$(PY) scripts/gen_config_docs.py
	$(PY) -m mkdocs build --strict

chart-check: $(VENV)/.installed
	bash scripts/check-chart.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .bench build dist site *.egg-info
