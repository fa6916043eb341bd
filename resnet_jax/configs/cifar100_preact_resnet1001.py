"""CIFAR-100 pre-activation ResNet-1001 (He et al. 2016, Table 3; 0.01 warm-up for 400 iterations)."""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return base.cifar_resnet_config("cifar_preact_resnet1001", dataset="cifar100", warmup=True, arg=arg)
