"""Helpers shared by the test modules (fixtures are in conftest.py)."""
from __future__ import annotations

import pathlib

import ml_collections

from resnet_jax.configs import cifar10_resnet20

# The tiny prepared CIFAR-10 of conftest's `data_dir`: all of its train and test splits.
TINY_SPLITS = {"data.train_split": "train", "data.eval_split": "test"}


def smoke_config(data_dir: str | pathlib.Path, eval_batch_size: int = 20, **overrides) -> ml_collections.ConfigDict:
  """`cifar10_resnet20:smoke` on the tiny dataset in `data_dir`, with dotted-key `overrides`."""
  config = cifar10_resnet20.get_config("smoke")
  fields = {**TINY_SPLITS, "eval_batch_size": eval_batch_size, "data.data_dir": str(data_dir), **overrides}
  for key, value in fields.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  return config
