# resnet_jax: `make train` (set-up included) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real CIFAR-10 for the tests and for `make train`: a folder in the official binary
# (cifar-10-batches-bin) or python layout, or the .tar.gz. Empty: the official download.
SHARED_CIFAR10 := $(abspath $(wildcard ../shared/data/cifar-10-batches-bin))
CIFAR10_SOURCE ?= $(SHARED_CIFAR10)
export RESNET_JAX_CIFAR10_DIR ?= $(CIFAR10_SOURCE)
# Where prepared TFDS datasets live (TFDS's own convention).
export TFDS_DATA_DIR ?= $(HOME)/tensorflow_datasets
CONFIG ?= cifar10_resnet20
WORKDIR ?= runs/cifar10_resnet20
TRAIN_ARGS ?=

.PHONY: install allocator test test-fast train models docs clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Two pytest workers (pytest-xdist), one file each at a time: most of a test's time is XLA
# compiling on one core. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# jemalloc makes CPU training 25-40 % faster: installed here where apt-get may (root or
# password-less sudo); otherwise one line says how much slower and the command that fixes it.
allocator: install
	$(BIN)/python -m resnet_jax.runtime.allocator

train: install allocator
	$(BIN)/resnet-jax prepare cifar10 $(if $(CIFAR10_SOURCE),--source $(CIFAR10_SOURCE)) --data-dir $(TFDS_DATA_DIR)
	$(BIN)/resnet-jax train --config $(CONFIG) --workdir $(WORKDIR) $(TRAIN_ARGS)

models: install
	$(BIN)/resnet-jax models

# The manual (docs/, mkdocs.yml) into build/site/; `$(BIN)/mkdocs serve` serves it while you edit.
docs: install
	$(BIN)/python -m mkdocs build --strict

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
