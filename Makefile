# AgentGate: `make demo` and `make test` work on a fresh machine (Python 3.11+, Node.js/npm, git).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := tools/node_modules/.bin/buf
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast protos check-protos lint buf coverage clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(BUF): tools/package.json
	cd tools && npm install --no-audit --no-fund --silent
	touch $(BUF)

venv: $(STAMP)

buf: $(BUF)

## Run the demo: a buggy project fixed by a scripted agent in 2 iterations.
demo: $(STAMP)
	$(VENV)/bin/agentgate demo

## Regenerate the Python stubs from protos/.
protos: $(STAMP)
	scripts/gen_protos.sh generated

## Fail when the committed stubs differ from what the protos generate.
check-protos: $(STAMP)
	@tmp=$$(mktemp -d); scripts/gen_protos.sh $$tmp >/dev/null; \
	if diff -r $$tmp/agentgate generated/agentgate >/dev/null; then echo "stubs up to date"; rm -rf $$tmp; \
	else diff -r $$tmp/agentgate generated/agentgate | head -20; rm -rf $$tmp; \
	echo "generated/ is stale: run 'make protos'"; exit 1; fi

lint: $(STAMP) $(BUF)
	$(VENV)/bin/ruff check services clients tests bench
	$(BUF) lint

## The whole suite (unit, integration, end-to-end) with coverage of the service processes.
test: $(STAMP) $(BUF) check-protos lint
	rm -f .coverage .coverage.*
	PATH="$(CURDIR)/tools/node_modules/.bin:$$PATH" $(VENV)/bin/pytest -p no:cacheprovider --cov --cov-report=term $(PYTEST_ARGS)

## Unit and integration tests only (no end-to-end).
test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) tools/node_modules .coverage .coverage.* htmlcov
