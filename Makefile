# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

# Every extra, at the exact versions CI tests (constraints.txt; pyproject.toml holds the ranges). torch
# is pinned to 2.13.0 (the CPU build); an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[export,server,data,dev]'
	touch $@

demo: setup
	$(BIN)/fedyolo demo

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python benchmarks/step.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
