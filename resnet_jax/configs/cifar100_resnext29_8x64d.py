"""CIFAR-100 ResNeXt-29 8x64d (Xie et al. 2017, Table 7 and App. A)."""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return base.cifar_resnext_config("resnext29_8x64d", dataset="cifar100", arg=arg)
