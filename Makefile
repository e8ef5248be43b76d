# Two commands for a fresh machine (see README, Quickstart):
#   make demo   set up the environment and run the whole pipeline on the built-in sample
#   make test   set up the environment and run the test suite (unit tests + slow end-to-end)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# DVC runs each stage's `python -m pipeline ...` with the environment's python first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test test-fast benchmark clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.lock
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

demo: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest -v -ra

test-fast: setup
	$(BIN)/python -m pytest -v -ra -m "not slow"

benchmark: setup
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf data models reports mlflow.db mlruns
