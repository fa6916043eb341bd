"""CIFAR-10 PreAct ResNet-18 with mixup (Zhang et al. 2018): the modern CIFAR recipe."""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return base.cifar_mixup_config(arg=arg)
