# AgentGate: `make demo` and `make test` work on a fresh machine (Python 3.11+, Node.js/npm, git).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := tools/node_modules/.bin/buf
# The Node.js client's dependencies (its end-to-end test runs it).
NODE_CLIENT := clients/node/node_modules/.installed
# The dashboard's npm packages (buf, protoc-gen-es, Vite, playwright-core) and its build.
WEB := clients/web
WEB_DEPS := $(WEB)/node_modules/.installed
WEB_BUILD := $(WEB)/dist/index.html
# The real agent CLIs (claude, codex) the tests run against a fake model server.
AGENT_CLIS := tools/agents/node_modules/.installed
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast protos check-protos lint buf venv bench clean sandbox-deps pg-deps agent-clis dashboard browser-deps screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(BUF): tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --silent
	touch $(BUF)

$(NODE_CLIENT): clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --silent
	touch $(NODE_CLIENT)

$(AGENT_CLIS): tools/agents/package.json tools/agents/package-lock.json
	cd tools/agents && npm ci --no-audit --no-fund --silent
	touch $(AGENT_CLIS)

agent-clis: $(AGENT_CLIS)

$(WEB_DEPS): $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --silent
	touch $(WEB_DEPS)

## The dashboard (docs/dashboard.md): type-checked and built by Vite into clients/web/dist,
## which the gateway serves. Rebuilt when a source, a stub or a dependency changes.
$(WEB_BUILD): $(WEB_DEPS) $(shell find $(WEB)/src -type f 2>/dev/null) $(WEB)/index.html $(WEB)/vite.config.ts $(WEB)/tsconfig.json
	cd $(WEB) && npm run --silent build

dashboard: $(WEB_BUILD)

## Debian's chromium for the browser tests (CI runs as root on a fresh Debian machine).
browser-deps:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; \
		else echo "chromium is missing: install it with 'sudo apt-get install chromium'" >&2; exit 1; fi; }

## Refresh the screenshots docs/ shows (the browser test writes them).
screenshots: $(STAMP) $(WEB_BUILD) browser-deps sandbox-deps
	AGENTGATE_SCREENSHOTS=$(CURDIR)/docs/screenshots $(VENV)/bin/pytest -q -p no:cacheprovider tests/e2e/test_dashboard_e2e.py

venv: $(STAMP)

## bubblewrap, the sandbox of agents and checks, and socat, an agent's relay to its network
## proxy (docs/sandbox.md): installed when missing (CI runs as root on a fresh Debian machine,
## whose package lists may be empty).
sandbox-deps:
	@{ command -v bwrap && command -v socat; } >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get install -y -q bubblewrap socat || { apt-get update -q && apt-get install -y -q bubblewrap socat; }; \
		else echo "bubblewrap (bwrap) or socat is missing: install them with 'sudo apt-get install bubblewrap socat'" >&2; exit 1; fi; }

## PostgreSQL server binaries (initdb, pg_ctl) for the tests that run the queue and
## persistence on PostgreSQL (tests/pg_server.py starts a private instance).
pg-deps:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get install -y -q postgresql || { apt-get update -q && apt-get install -y -q postgresql; }; \
		else echo "PostgreSQL is missing: install it with 'sudo apt-get install postgresql'" >&2; exit 1; fi; }

buf: $(BUF)

## Run the demo: a buggy project fixed by a scripted agent in 2 iterations.
demo: $(STAMP) sandbox-deps
	$(VENV)/bin/agentgate demo

## Regenerate the stubs from protos/: Python (generated/) and TypeScript (clients/web/src/gen).
protos: $(STAMP) $(WEB_DEPS)
	scripts/gen_protos.sh generated
	scripts/gen_web_stubs.sh

## Fail when the committed stubs differ from what the protos generate.
check-protos: $(STAMP) $(WEB_DEPS)
	@tmp=$$(mktemp -d); scripts/gen_protos.sh $$tmp >/dev/null; \
	if diff -r -x __pycache__ $$tmp/agentgate generated/agentgate >/dev/null; then echo "stubs up to date"; rm -rf $$tmp; \
	else diff -r -x __pycache__ $$tmp/agentgate generated/agentgate | head -20; rm -rf $$tmp; \
	echo "generated/ is stale: run 'make protos'"; exit 1; fi
	@tmp=$$(mktemp -d); scripts/gen_web_stubs.sh $$tmp/gen >/dev/null; \
	if diff -r $$tmp/gen $(WEB)/src/gen >/dev/null; then echo "web stubs up to date"; rm -rf $$tmp; \
	else diff -r $$tmp/gen $(WEB)/src/gen | head -20; rm -rf $$tmp; \
	echo "$(WEB)/src/gen is stale: run 'make protos'"; exit 1; fi

lint: $(STAMP) $(BUF)
	$(VENV)/bin/ruff check services clients tests bench
	$(VENV)/bin/mypy
	$(BUF) lint

## The whole suite (unit, integration, end-to-end) with coverage of the service processes.
test: $(STAMP) $(BUF) $(NODE_CLIENT) $(AGENT_CLIS) $(WEB_BUILD) sandbox-deps pg-deps browser-deps check-protos lint
	rm -f .coverage .coverage.*
	PATH="$(CURDIR)/tools/node_modules/.bin:$$PATH" $(VENV)/bin/pytest -p no:cacheprovider --cov --cov-report=term $(PYTEST_ARGS)

## Unit and integration tests only (no end-to-end).
test-fast: $(STAMP) $(AGENT_CLIS) sandbox-deps pg-deps
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

## Benchmarks (bench/, see docs/benchmarks.md): figures against the targets. BENCH_ARGS adds
## flags (--quick, --profile DIR); each run also appends its figures as JSON to BENCH_JSON.
BENCH_SCRIPTS := rpc e2e queue_scale fanout persistence peer cli sandbox patches repo_scale pg
BENCH_JSON ?= $(VENV)/bench-results.jsonl
.PHONY: bench
bench: $(STAMP) sandbox-deps
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@set -e; for name in $(BENCH_SCRIPTS); do \
		$(PY) bench/bench_$$name.py --json $(BENCH_JSON) $(BENCH_ARGS); \
	done

clean:
	rm -rf $(VENV) tools/node_modules tools/agents/node_modules clients/node/node_modules $(WEB)/node_modules $(WEB)/dist .coverage .coverage.* htmlcov test-artifacts
