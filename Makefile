# make demo: set up .venv (if missing) and run the main job on the embedded default.
# make test: set up .venv (if missing) and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftlab-installed

.PHONY: demo test test-kernels setup bench clean

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

# The numerical tests again under the CPU kernel paths other machines take (CI runs it after `make test`), so a
# tolerance that holds on this machine's instruction set only cannot turn CI red on another.
test-kernels: $(STAMP)
	for cap in default avx2; do ATEN_CPU_CAPABILITY=$$cap $(BIN)/python -m pytest -m numerical -p no:cacheprovider || exit 1; done

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf demo-out runs .pytest_cache
