"""CIFAR-10 Fixup ResNet-110 without normalisation (Zhang, Dauphin & Ma 2019, Table 2: 7.24 %).

The recipe of the authors' CIFAR code (hongyi-zhang/Fixup, `cifar/cifar_train.py`): batch 128,
SGD momentum 0.9, coupled weight decay 1e-4 on every parameter, lr 0.1 ÷10 at epochs 100 and 150
of 200, the scalar biases and multipliers (every parameter named "bias" or "scale") at a tenth of
the learning rate, per-channel normalisation, 4-pixel pad-and-crop and flips, trained on the 50,000
training images and tested on the 10,000 test images. Their default mixup (α = 1) is not used: the
engine has no mixup, and Table 2 compares normalisation without it (see configs/README.md).
"""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  c = base.cifar_epochs_config("cifar_fixup_resnet110", {}, num_epochs=200, boundaries=(100, 150))
  c.optimizer.scaled_learning_rate_params = "bias|scale"
  c.optimizer.scaled_learning_rate_factor = 0.1
  c.bn.mode = "global"  # no BatchNorm to group
  return base.with_variant(c, arg)
