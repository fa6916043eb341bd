"""Shared pytest fixtures.

Real data is found through the environment, never a hard-coded path:
``RESNET_JAX_CIFAR10_DIR`` points at an official ``cifar-10-batches-bin`` folder
(``make test`` sets it to ``../shared/data/cifar-10-batches-bin`` when that exists).
"""
from __future__ import annotations

import os
import pathlib
import subprocess

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


class Mounts:
  """tmpfs mounts for tests of a full disk, exhausted inodes or a read-only filesystem.

  Mounting needs root with mount rights (as in CI); elsewhere the test is skipped with the
  reason. Every mount is undone when the test ends, whatever happens.
  """

  def __init__(self):
    self.mounted: list[pathlib.Path] = []

  def tmpfs(self, path: pathlib.Path, options: str = "size=700k") -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True)
    try:
      result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
      pytest.skip("no `mount` command here: the test needs a tmpfs mount (root, as in CI)")
    if result.returncode != 0:
      pytest.skip(f"mounting a tmpfs is not permitted here ({result.stderr.strip() or result.returncode}): "
                  "the test needs root with mount rights, as in CI")
    self.mounted.append(path)
    return path

  def read_only(self, path: pathlib.Path) -> None:
    """Makes `path`, a folder (mounted or not), a read-only mount of itself."""
    if path not in self.mounted:
      subprocess.run(["mount", "--bind", str(path), str(path)], check=True, timeout=30)
      self.mounted.append(path)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True, timeout=30)

  def undo(self) -> None:
    for path in reversed(self.mounted):
      if subprocess.run(["umount", str(path)], capture_output=True, timeout=30, check=False).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)
    self.mounted.clear()


@pytest.fixture
def mounts():
  """`mounts.tmpfs(path, options)`, `mounts.read_only(path)`; all undone after the test."""
  m = Mounts()
  try:
    yield m
  finally:
    m.undo()
