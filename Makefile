# Two entry points: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo serve test lint typecheck bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

DEMO_TASK ?= Design a rate limiter for the public API and roll it out safely

# The main job: a workshop run with the embedded defaults (template dialogue, SQLite
# purgatory under .agentflux/, approvals answered automatically).
demo: $(VENV)/.installed
	$(VENV)/bin/agentflux workshop run "$(DEMO_TASK)" --approve auto --seed 7 --pace 0.08

$(VENV)/.installed-web: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[web,llm]'
	touch $@ $(VENV)/.installed

# The dashboard and HTTP API on http://127.0.0.1:8765/ (prints the token to paste into the page).
serve: $(VENV)/.installed-web
	$(VENV)/bin/agentflux serve

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check src tests bench examples
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(VENV)/.installed-dev
	$(PY) -m mypy

# The benchmark smoke run goes first so that pytest's summary is the last thing printed.
test: lint typecheck
	$(PY) -m bench.run --quick > /dev/null
	$(PY) -m pytest --cov=agentflux --cov-report=term-missing:skip-covered

bench: $(VENV)/.installed-dev
	$(PY) -m bench.run --write docs/benchmarks.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
