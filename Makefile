# mlaas4hep: `make demo` and `make test` do all set-up themselves on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
comma := ,
EXTRAS ?= dev,s3,xrootd,plots,torch,tf,onnx
# The CPU build of PyTorch, pinned exactly: a range would pull several GB of CUDA wheels.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)-$(subst $(comma),_,$(EXTRAS))
PYTEST_ARGS ?=

.PHONY: install test lint format check-infra bench bench-pipeline bench-serve bench-training validate-training demo stack-up stack-status stack-down clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	bash scripts/install_system_deps.sh
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check-infra: install
	bash scripts/check_infra.sh

test: install lint check-infra
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python scripts/bench/bench_data.py

validate-training: install
	$(BIN)/python scripts/validate_training.py

bench-pipeline: install
	$(BIN)/python scripts/bench/bench_pipeline.py

bench-serve: install
	$(BIN)/python scripts/bench/bench_serve.py

bench-training: install
	$(BIN)/python scripts/bench/bench_training.py

demo: install
	$(BIN)/python scripts/demo.py --continuous

stack-up: install
	$(BIN)/python scripts/local_stack.py up --detach --serve

stack-status: install
	$(BIN)/python scripts/local_stack.py status

stack-down:
	$(BIN)/python scripts/local_stack.py down

clean:
	rm -rf $(VENV) .venv-tools build *.egg-info .pytest_cache .ruff_cache
