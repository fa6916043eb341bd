"""CIFAR-100 pre-activation ResNet-164 (He et al. 2016, Tables 2-3).

Warm-up at 0.01 for 400 iterations, as every CIFAR run of the paper (appendix).
"""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return base.cifar_resnet_config("cifar_preact_resnet164", dataset="cifar100", warmup=True, arg=arg)
