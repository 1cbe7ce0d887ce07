# Two commands do everything on a fresh Debian/Ubuntu machine with Python 3.11:
#   make demo   - set up .venv and run the demo study end to end (results/demo/)
#   make test   - set up .venv and run the tests (unit, integration, real SLURM)
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
CONFIG ?= config/config.yaml
# extra pip arguments for torch, e.g. a CPU-only package index on machines that would otherwise
# pull a CUDA build
PIP_TORCH_ARGS ?=
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint bench clean-demo setup

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0 $(PIP_TORCH_ARGS)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --workflow-profile profiles/local --cores $(CORES) --configfile $(CONFIG)

test: $(VENV)/.installed
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest

test-fast: $(VENV)/.installed
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -m "not slow and not slurm"

lint: $(VENV)/.installed
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint

bench: $(VENV)/.installed
	for b in benchmarks/bench_*.py; do PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python $$b || exit 1; done
