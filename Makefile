# BoundFlow: `make demo` and `make test` work on a fresh machine with only Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Pinned first: on this machine kind torch 2.13.0 is a local CPU build; an unpinned
	# install would download a multi-GB CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m boundflow demo --force   # (replaces the previous demo's plots in results/)

# one pytest-xdist worker per core (JOBS=0: the suite in this one process)
JOBS ?= auto

test: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) --dist loadgroup

test-slow: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) --dist loadgroup -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check boundflow solvers benchmarks tests
	$(VENV)/bin/ruff format --check boundflow solvers benchmarks tests

bench: $(STAMP)
	$(PY) benchmarks/interval_overhead.py

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site .pytest_cache .ruff_cache .hypothesis
