# Two commands on a fresh machine: `make repro` (set up, then run the pipeline) and `make test`.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export GPTQMODEL_CPU_WORKERS ?= 2

$(STAMP): pyproject.toml
	python3.11 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

.PHONY: setup repro test gpu-repro
setup: $(STAMP)

repro: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

test: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -v tests

# The thesis-scale profile (profiles/gpu.txt: one `section.key=value` a line) as one DVC experiment.
gpu-repro:
	dvc exp run $(addprefix -S ,$(shell cat profiles/gpu.txt))
