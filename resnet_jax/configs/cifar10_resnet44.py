"""CIFAR-10 ResNet-44 (He et al. 2015, Table 6)."""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return base.cifar_resnet_config("cifar_resnet44", warmup=False, arg=arg)
