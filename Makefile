# make demo: set up .venv (if missing) and run the main job on the embedded default.
# make test: set up .venv (if missing) and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftlab-installed

.PHONY: demo test setup bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the package metadata changes. torch is pinned to a range (see pyproject.toml) so pip
# takes the local CPU build here instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ftlab demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf demo-out runs .pytest_cache
