# `make demo` and `make test` each build .venv on first use: torch goes in first and pinned, so that no later
# requirement can pull a multi-GB CUDA build. TORCH is the pip requirement (and options) for that first install;
# the default is the CPU wheel on this machine's disk. Elsewhere pick a build (README, "Choosing a torch build"):
#   make demo TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cpu"     CPU only
#   make demo TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121"   CUDA 12.1
# It applies when .venv is built: `make clean` first to change the torch of an existing .venv.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH ?= torch==2.13.0
# test processes (pytest-xdist): one per core of the 2-core CI machine; each runs torch on one thread (tests/conftest.py)
TEST_PROCS ?= 2

.PHONY: demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medssl demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_PROCS)

bench: $(STAMP)
	$(BIN)/python bench/data_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
