"""CIFAR-10 ResNet-1202 (He et al. 2015, Table 6; 0.01 warm-up for 400 iterations, §4.2)."""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return base.cifar_resnet_config("cifar_resnet1202", warmup=True, arg=arg)
