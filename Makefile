# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps: what the daemon needs (`make run`) and, on top, the test tools (`make test`:
# pytest, Playwright, schemathesis, mypy...), so that running the daemon installs no test tool.
SUM     := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
RUNTIME := $(VENV)/.runtime-$(SUM)
STAMP   := $(VENV)/.installed-$(SUM)

.PHONY: install install-runtime system-deps runtime-deps run init test lint typecheck unit unit-sqlite unit-postgresql security bench demo clean vendor

$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	rm -f $(VENV)/.runtime-*
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## the runtime only: what `make run` needs
install-runtime: $(RUNTIME)

## the runtime and the test tools: what development and `make test` need
install: $(STAMP)

## set everything up and start the daemon on the sample schedules
run: install-runtime runtime-deps
	mkdir -p var exports
	$(BIN)/marketcare init
	exec $(BIN)/marketcare run

init: install-runtime
	$(BIN)/marketcare init

## Debian packages the tests need: LibreOffice proves an export opens; CJK fonts render it;
## Chromium runs the browser tests (Playwright drives Debian's build, it downloads none);
## PostgreSQL's server binaries run a throwaway server for the suite's PostgreSQL run;
## Pango lays out the weekly bulletin's PDF (WeasyPrint), with the CJK fonts; HarfBuzz subsets them;
## wapiti and sqlmap scan a running daemon (tests/test_scan.py, `make security`)
SYSTEM_PACKAGES := libreoffice-calc-nogui fonts-noto-cjk fontconfig fonts-crosextra-carlito poppler-utils openssl chromium postgresql libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 wapiti sqlmap

## the Debian packages named that are not installed yet, installed (as root, or through
## sudo); asked of dpkg package by package, so a package added to a list is never missed
define apt_ensure
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef
system-deps:
	$(call apt_ensure,$(SYSTEM_PACKAGES))

## Debian packages the daemon itself needs: Pango and the CJK fonts lay out the weekly
## bulletin's PDF (WeasyPrint); fontconfig's fc-match finds the CJK face it cuts to a page
RUNTIME_PACKAGES := libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-noto-cjk fontconfig
runtime-deps:
	$(call apt_ensure,$(RUNTIME_PACKAGES))

## set everything up and run the whole suite (lint, types, tests)
test: install system-deps lint typecheck unit

## ruff, the layering of docs/design.md (import-linter), dead code (vulture: pyproject.toml
## and vulture_whitelist.py), bandit's security checks
lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports
	$(BIN)/vulture
	$(BIN)/bandit -c pyproject.toml -r src -q

typecheck: install
	$(BIN)/mypy

## the whole suite twice, in random order (pytest-randomly prints the seed): on SQLite, then
## on PostgreSQL (a throwaway server in a temporary folder, unless MARKETCARE_TEST_DATABASE_URL
## names one; see docs/postgresql.md). The PostgreSQL run leaves out the modules marked
## no_database (pure rules and parsing: they run once, on SQLite).
## Each run spreads its test modules over TEST_WORKERS processes (pytest-xdist, a whole module
## per worker so that a module's shared server stays one): most tests wait on a daemon, a
## browser or LibreOffice, so two workers keep two cores busy. `make unit TEST_WORKERS=0` runs
## in one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

unit: unit-sqlite unit-postgresql

unit-sqlite: install
	MARKETCARE_TEST_DB=sqlite $(PYTEST)

unit-postgresql: install
	MARKETCARE_TEST_DB=postgresql $(PYTEST)

## the dynamic security scan with its full budget (wapiti on the pages, sqlmap on the API,
## on SQLite then on PostgreSQL); `make test` runs the same scan short
security: install system-deps
	MARKETCARE_SCAN=full MARKETCARE_TEST_DB=sqlite $(BIN)/pytest tests/test_scan.py
	MARKETCARE_SCAN=full MARKETCARE_TEST_DB=postgresql $(BIN)/pytest tests/test_scan.py
## front-end libraries, vendored as files (there is no front-end build): fetched from the
## npm registry by `npm pack`, the file the pages load copied with its licence and version
IDB_VERSION := 8.0.4
VENDOR := src/marketcare/web/static/vendor
vendor:
	rm -rf $(VENDOR)/idb-$(IDB_VERSION) && mkdir -p $(VENDOR)/idb-$(IDB_VERSION)
	tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent idb@$(IDB_VERSION) >/dev/null && tar xzf idb-$(IDB_VERSION).tgz) \
	  && cp $$tmp/package/build/umd.js $(VENDOR)/idb-$(IDB_VERSION)/idb.umd.js \
	  && cp $$tmp/package/LICENSE $(VENDOR)/idb-$(IDB_VERSION)/LICENSE \
	  && cp $$tmp/package/package.json $(VENDOR)/idb-$(IDB_VERSION)/package.json \
	  && rm -rf $$tmp

bench: install
	$(BIN)/python bench/run.py

demo: install-runtime
	$(BIN)/marketcare demo --days 14

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
