"""ImageNet ResNet-34 (He et al. 2015, Tables 1-4; 90 epochs, ÷10 every 30)."""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return base.imagenet_config("resnet34", arg=arg)
