"""Every recipe's :smoke variant trains a few steps through the training loop (issue 34): the
CIFAR-10 mixup recipe on the tiny CIFAR-10 of `conftest.data_dir`, the ImageNet recipes on a
two-class ImageNet of small JPEGs prepared once for the module. Their networks are tiny; what
they exercise is each recipe's program (optimiser, schedule, loss, augmentations, the eval crop)
end to end.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import support

import resnet_jax as rj
import resnet_jax.data as rjd
from resnet_jax import configs
from resnet_jax.data import testing as rjd_testing
from test_recipes import RECIPES


def test_cifar_recipe_smoke_trains(data_dir, tmp_path, fast_compile):
  config = configs.load("cifar10_preact_resnet18_mixup:smoke", overrides={
      **support.TINY_SPLITS, "data.data_dir": str(data_dir), "num_steps": 4, "eval_batch_size": 50})
  result = rj.train.train(config, tmp_path / "mixup")
  assert result.step == 4 and np.isfinite(result.train["loss"])


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory) -> pathlib.Path:
  """Two ILSVRC classes of 16 small JPEGs in each split, prepared as imagenet2012 (for the smokes)."""
  root = tmp_path_factory.mktemp("tiny_imagenet")
  source = rjd_testing.write_imagenet_folder(root / "src", ("n01440764", "n01443537"), per_class=16, size=(72, 96))
  rjd.prepare("imagenet2012", source, root / "tfds")
  return root / "tfds"


@pytest.mark.parametrize("name", [r for r in RECIPES if r.startswith("imagenet")])
def test_imagenet_recipe_smoke_trains(name, imagenet_dir, tmp_path, fast_compile):
  config = configs.load(f"{name}:smoke", overrides={
      "data.data_dir": str(imagenet_dir), "data.train_split": "train", "data.eval_split": "validation",
      "num_steps": 2, "log_every_steps": 1, "checkpoint_every_steps": 2})
  result = rj.train.train(config, tmp_path / name)
  assert result.step == 2 and np.isfinite(result.train["loss"]) and result.eval["num_examples"] == 32
