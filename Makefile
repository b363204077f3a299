# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install run init test lint typecheck unit bench demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

## set everything up and start the daemon on the sample schedules
run: install
	mkdir -p var exports
	$(BIN)/marketcare init
	exec $(BIN)/marketcare run

init: install
	$(BIN)/marketcare init

## set everything up and run the whole suite (lint, types, tests)
test: install lint typecheck unit

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/run.py

demo: install
	$(BIN)/marketcare demo --days 14

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
