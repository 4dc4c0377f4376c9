# The README's two commands: `make demo` and `make test`. Both create .venv when missing and install
# idempotently (the stamp is rebuilt only when pyproject.toml changes). CPU torch is pinned so that no
# CUDA wheels are pulled; on GPU machines install your CUDA torch first (README, "GPU clusters").
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.clinray-installed
TORCH_CPU := torch==2.13.0
PIP_QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint format bench-quick clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing clinray into $(VENV) (first time: a few minutes)"
	$(BIN)/python -m pip install -q --upgrade pip $(PIP_QUIET)
	$(BIN)/python -m pip install -q $(TORCH_CPU) $(PIP_QUIET)
	$(BIN)/python -m pip install -q -e '.[dev]' $(PIP_QUIET)
	@touch $@

install: $(STAMP)

demo: install
	$(BIN)/clinray demo

test: install lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest $(PYTEST_ARGS)

# unit tests only: no Ray cluster, nothing marked slow, no GPU (about 40 s on 2 cores)
test-fast: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest tests/unit -m "not ray and not slow and not gpu" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench-quick: install
	for b in benchmarks/[a-z]*.py; do case $$b in */common.py|*/peer_*.py) ;; *) $(BIN)/python $$b --quick;; esac; done

clean:
	rm -rf $(VENV) .venv-peer runs .pytest_cache
