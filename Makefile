# Two entry points on a fresh machine:
#   make demo   create .venv, install prunepass, run the end-to-end demo
#   make test   create .venv, install prunepass with test extras, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install coverage clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[demo,test,bench]"

demo: install
	$(BIN)/prunepass demo

test: install
	$(BIN)/python -m pytest -q tests

coverage: install
	$(BIN)/python benchmarks/coverage.py

clean:
	rm -rf $(VENV) build *.egg-info benchmarks/results
