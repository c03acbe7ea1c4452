# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# Flower's apps are tested in a venv of their own: flwr 1.42 pins typer, rich, fastapi, uvicorn and
# protobuf below the versions the main environment tests (flower-constraints.txt has the combination).
FLOWER_VENV ?= .venv-flower

.PHONY: setup setup-flower web web-check demo test lint bench clean

# fedyolo's ExecuTorch kernel library (GEMMs on every core, fast permute/erf/GELU): g++ against the
# executorch wheel's headers, ~5 s; rebuilt when its source changes (runtime/et_kernels.py)
ET_KERNELS = runtime/native/libfedyolo_et_kernels.so
# the ExecuTorch backend's runner: ExecuTorch's C++ runtime through ctypes, no libtorch (runtime/et_program.py)
ET_RUNNER = runtime/native/libfedyolo_et_runner.so

setup: $(VENV)/.installed web-check $(ET_KERNELS) $(ET_RUNNER)

$(ET_KERNELS): runtime/native/fedyolo_et_kernels.cpp runtime/et_kernels.py $(VENV)/.installed
	$(BIN)/python -m fedyolo.runtime.et_kernels build

$(ET_RUNNER): runtime/native/fedyolo_et_runner.cpp runtime/et_program.py runtime/et_kernels.py $(VENV)/.installed
	$(BIN)/python -m fedyolo.runtime.et_program build

# The phone's page (android_demo/web): npm installs the lockfile's exact versions (onnxruntime-web's
# training build, playwright-core for the tests); the build copies the sources and the one wasm variant
# into fedserver/web, committed, so `pip install fedyolo[server]` serves the page with no npm.
# `make web` rebuilds after an edit; setup checks that the committed build equals a fresh one.
WEB = android_demo/web
$(WEB)/node_modules/.installed: $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

web: $(WEB)/node_modules/.installed
	cd $(WEB) && node build.mjs

web-check:
	@if command -v npm >/dev/null; then $(MAKE) -s $(WEB)/node_modules/.installed && cd $(WEB) && node build.mjs --check; \
	else echo "npm not found: serving the committed fedserver/web; the browser tests will skip"; fi

# Every extra (executorch too, so its tests run in CI), at the exact versions CI tests (constraints.txt;
# pyproject.toml holds the ranges). torch is pinned
# to 2.13.0 (the CPU build); an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[export,server,data,dev,executorch]'
	touch $@

setup-flower: $(FLOWER_VENV)/.installed

$(FLOWER_VENV)/.installed: pyproject.toml flower-constraints.txt
	$(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/pip install -q --upgrade pip
	$(FLOWER_VENV)/bin/pip install -q -c flower-constraints.txt -e '.[export,server,data,flower]' pytest
	touch $@

demo: setup
	$(BIN)/fedyolo demo

test: setup setup-flower
	$(BIN)/pytest -q
	$(FLOWER_VENV)/bin/pytest -q tests/flower

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python benchmarks/step.py

clean:
	rm -rf $(VENV) $(FLOWER_VENV) $(WEB)/node_modules demo_out .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
