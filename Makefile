# Two commands for a fresh machine:
#   make train   set up, find or fetch Fashion-MNIST, train the quick recipe, write a report
#   make test    set up and run the whole test suite (what CI runs)

PYTHON ?= python3
VENV ?= .venv
# Any torch >= 2.4 works. This pin gets the CPU build on the project's own machines;
# for a GPU use e.g. `make train TORCH=torch` (PyPI's default build includes CUDA).
TORCH ?= torch==2.13.0
CONFIG ?= configs/fmnist-mixer-quick.toml
BIN = $(VENV)/bin

.PHONY: setup train test lint clean

$(BIN)/tinyvision: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

setup: $(BIN)/tinyvision

train: setup
	$(BIN)/tinyvision train $(CONFIG)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
