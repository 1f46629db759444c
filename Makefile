# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup data demo test lint format bench-train clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/setup.sh
	scripts/setup.sh $(VENV)
	touch $@

data: setup
	scripts/get_data.sh $(VENV)

# Train a binary-weight MLP (BinaryConnect) and its full-precision twin on Fashion-MNIST.
demo: setup data
	$(BIN)/onebit train configs/demo.toml --twin

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check onebit tests benchmarks
	$(BIN)/ruff format --check onebit tests benchmarks

format: setup
	$(BIN)/ruff format onebit tests benchmarks
	$(BIN)/ruff check --fix onebit tests benchmarks

bench-train: setup
	$(BIN)/python benchmarks/bench_train_step.py

clean:
	rm -rf $(VENV) build *.egg-info onebit/kernels/*.so
