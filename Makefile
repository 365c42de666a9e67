# hyperbytedb-proxy: every command sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test unit lint lint-js format run bench chaos deps docs chart-check lock clean

# Exactly the versions and hashes of requirements-dev.lock, then the project
# itself without resolving anything again.
$(VENV)/.installed: pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements-dev.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

LOCK := $(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes --quiet

## lock: re-resolve the lock files after a change to pyproject.toml's dependencies
## (pins already in the files are kept when they still fit; `make lock UPGRADE=--upgrade` bumps them all)
lock: $(VENV)/.installed
	$(LOCK) $(UPGRADE) --extra gunicorn -o requirements.lock
	$(LOCK) $(UPGRADE) --extra dev --constraints requirements.lock -o requirements-dev.lock
	$(PY) -m pip install -q --require-hashes -r requirements-dev.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(VENV)/.installed

## demo: a local three-node simulated HyperbyteDB cluster behind the proxy on 127.0.0.1:8086
demo: $(VENV)/.installed
	$(PY) -m sim.cluster

## test: the whole suite (unit, integration, browser, deployment, short fault runs, benchmark smoke)
test: $(VENV)/.installed deps
	$(PY) -m pytest

## unit: every test that needs no process, browser or chart renderer (seconds)
unit: $(VENV)/.installed
	$(PY) -m pytest -m "not integration and not browser and not deploy and not slow"

deps:
	bash scripts/install-test-deps.sh

## lint: ruff, ruff format --check, mypy (strict on app/), and lint-js
lint: $(VENV)/.installed lint-js
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# Biome, pinned in package-lock.json, for the status page's files.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

## lint-js: Biome on the status page's JavaScript and CSS, then their node unit tests
lint-js: node_modules/.installed
	npm run --silent lint
	npm test --silent

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
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache .mypy_cache .bench build dist site *.egg-info
