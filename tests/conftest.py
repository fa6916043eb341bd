"""Shared pytest fixtures.

Real data is found through the environment, never a hard-coded path:
``RESNET_JAX_CIFAR10_DIR`` points at an official ``cifar-10-batches-bin`` folder
(``make test`` sets it to ``../shared/data/cifar-10-batches-bin`` when that exists).
"""
from __future__ import annotations

import os
import pathlib

import jax
import pytest

from resnet_jax.data import testing as data_testing

os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> pathlib.Path:
  """320 train / 50 test random CIFAR-10-format images, prepared once as TFDS ArrayRecord.

  A module that needs another dataset defines its own `data_dir`.
  """
  return data_testing.prepare_cifar10(tmp_path_factory.mktemp("tiny_cifar10"), num_train_per_batch=64,
                                      num_test=50, seed=0)


@pytest.fixture(scope="module")
def fast_compile():
  """XLA without most optimisations, for modules that test what a network is, not how fast
  it runs (compiles several times faster; the arithmetic is the same up to float rounding)."""
  previous = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
  # Executables compiled without optimisations stay in JAX's in-memory caches, whose keys do
  # not hold this flag: later modules would mix them with optimised ones (1-ulp differences).
  jax.clear_caches()


@pytest.fixture(scope="session")
def cifar10_source() -> pathlib.Path:
  path = os.environ.get("RESNET_JAX_CIFAR10_DIR")
  if not path:
    pytest.skip("real CIFAR-10 not configured: set RESNET_JAX_CIFAR10_DIR to a cifar-10-batches-bin folder")
  p = pathlib.Path(path)
  if not (p / "data_batch_1.bin").is_file():
    pytest.skip(f"RESNET_JAX_CIFAR10_DIR={path} holds no data_batch_1.bin")
  return p
