# Two commands on a fresh machine: `make repro` (set up, then run the pipeline) and `make test-all` (what CI runs);
# `make test` leaves out the tests marked slow (the real model, dvc end to end).
# The interpreter of .venv: python3.11, or python3.12 (`make repro PYTHON=python3.12` on a fresh checkout).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export GPTQMODEL_CPU_WORKERS ?= 2

# The exact versions the tests passed with (requirements.lock), then the project itself without resolving again.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e '.[dev]'
	touch $(STAMP)

.PHONY: setup repro test test-all gpu-repro edge
setup: $(STAMP)

# Stages run in forks of one process that imported torch and transformers once (llmshrink/warm.py); llama.cpp's
# quantizer (export, kquant_base, gptq_gguf) is built first, once per machine (`edge`).
repro: $(STAMP) edge
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m llmshrink.warm dvc repro

test: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -v -m "not slow" tests

test-all: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -v tests

# llama.cpp's llama-quantize and llama-bench built from the llama-cpp-python sdist into the download cache (cmake,
# C++; 15-25 minutes on 2 cores, once per machine; nothing when built): the K-quants and importance-matrix types of
# the GGUF stages, and llama.cpp's tokens/s for every GGUF file in the benchmark stage.
edge: $(STAMP)
	$(BIN)/python -m llmshrink.llamacpp

# The thesis-scale profile (profiles/gpu.txt: one `section.key=value` a line) as one DVC experiment.
gpu-repro:
	python -m llmshrink.warm dvc exp run $(addprefix -S ,$(shell cat profiles/gpu.txt))
