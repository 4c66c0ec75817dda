# Two entry points on a fresh machine:
#   make demo   create .venv, install prunepass (and scikit-learn), run the end-to-end demo
#   make test   create .venv, install prunepass with every extra, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install cross-compiler cxx aarch64-sysroot coverage clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# the demo needs the base install and scikit-learn's digits: no TVM, no root
demo: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[demo]"
	$(BIN)/prunepass demo

# everything: every extra, the tests' tools, the aarch64 cross compiler and a C++ compiler
# for the TVM library kernels (apt, root)
install: $(BIN)/python cross-compiler cxx
	$(BIN)/python -m pip install -q -e ".[test,bench]"

# aarch64 cross-compilation of TVM libraries needs Debian's cross gcc
cross-compiler:
	@command -v aarch64-linux-gnu-gcc >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq gcc-aarch64-linux-gnu >/dev/null; }

# TVM's library kernels (--library) are a C++ extension built on first use
cxx:
	@command -v g++ >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq g++ >/dev/null; }

# aarch64 libraries are run under qemu-user in an aarch64 user space (tests, emulated RPC device)
aarch64-sysroot: $(BIN)/python
	@PYTHON=$(BIN)/python bash .ci/aarch64-sysroot.sh

test: install aarch64-sysroot
	$(BIN)/python -m pytest -q tests

coverage: install
	$(BIN)/python benchmarks/coverage.py

clean:
	rm -rf $(VENV) build *.egg-info benchmarks/results
