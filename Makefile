# Two commands for a fresh machine: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles from source; see deploy/cmake-args.sh for why not -march=native.
# Flags you give in CMAKE_ARGS (e.g. -DGGML_CUDA=on) come after the CPU ones and win.
override CMAKE_ARGS := $(shell sh deploy/cmake-args.sh) $(CMAKE_ARGS)
export CMAKE_ARGS

.PHONY: install install-dev tools llama-server run test test-fast lint bench bench-server clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -e '.[dev,postgresql]'
	# Pinned so that pip takes the CPU build kept on the build machines' disk.
	$(BIN)/pip install 'torch==2.13.0'
	$(BIN)/pip install -e '.[heavy]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/python -m bot

tools:
	sh deploy/dev-tools.sh

test: install-dev tools llama-server
	$(BIN)/python -m pytest

# Everything but the conversion proofs against transformers and llm-rs (marked heavy).
test-fast: install-dev
	$(BIN)/python -m pytest -m 'not heavy'

lint: install-dev
	$(BIN)/ruff check bot storage models tests
	$(BIN)/ruff format --check bot storage models tests
	$(BIN)/mypy

# Time-to-first-token with and without the state cache, on a random ~200M GPT-2 (3 minutes).
bench: install-dev
	mkdir -p build
	$(BIN)/python tests/support/tiny_model.py --bench build/bench.gguf
	$(BIN)/domovoy bench --model build/bench.gguf --history-tokens 1500 --users 3 --json

# llama.cpp's own server, built from the llama.cpp sources of the installed llama-cpp-python
# (its sdist) with our CPU flags, cached outside the checkout (~/.cache/domovoy): the tests of
# ENGINE=remote run it, and the bench compares against it.
llama-server: install-dev
	sh deploy/llama-server.sh $(BIN)/python

# The same bench, with the several-at-once workload also run on llama.cpp's own server.
bench-server: install-dev llama-server
	mkdir -p build
	$(BIN)/python tests/support/tiny_model.py --bench build/bench.gguf
	$(BIN)/domovoy bench --model build/bench.gguf --history-tokens 1500 --users 3 --json \
		--llama-server "$$(sh deploy/llama-server.sh $(BIN)/python)"

clean:
	rm -rf $(VENV)
