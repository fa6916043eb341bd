"""CIFAR-10 plain-44 (He et al. 2015, Fig. 6: no shortcuts)."""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return base.cifar_resnet_config("cifar_plain44", arg=arg)
