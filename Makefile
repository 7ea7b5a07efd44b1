# Two commands on a fresh machine: `make demo` and `make test`. Both set up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MODEL  := smollm2-135m-instruct

.PHONY: setup model demo test bench clean

setup: $(STAMP) model

# torch is installed first and pinned: an unpinned torch pulled in by another package
# would be a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Idempotent: the model store answers from its cache after the first pull.
model: $(STAMP)
	$(BIN)/tunekit models pull $(MODEL)

demo: setup
	$(BIN)/tunekit run examples/support/config.yaml

test: setup
	$(BIN)/python -m pytest

# Benchmarks are not tests: they measure this machine and write bench/results/.
bench: setup
	$(BIN)/python bench/throughput.py

clean:
	rm -rf runs .pytest_cache
