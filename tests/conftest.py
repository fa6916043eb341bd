"""Shared pytest fixtures.

Real data is found through the environment, never a hard-coded path:
``RESNET_JAX_CIFAR10_DIR`` points at an official ``cifar-10-batches-bin`` folder
(``make test`` sets it to ``../shared/data/cifar-10-batches-bin`` when that exists).
"""
from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def cifar10_source() -> pathlib.Path:
  path = os.environ.get("RESNET_JAX_CIFAR10_DIR")
  if not path:
    pytest.skip("real CIFAR-10 not configured: set RESNET_JAX_CIFAR10_DIR to a cifar-10-batches-bin folder")
  p = pathlib.Path(path)
  if not (p / "data_batch_1.bin").is_file():
    pytest.skip(f"RESNET_JAX_CIFAR10_DIR={path} holds no data_batch_1.bin")
  return p
