"""ImageNet ResNeXt-101 32x4d (Xie et al. 2017, Table 3; 100 epochs, ÷10 every 30)."""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return base.imagenet_config("resnext101_32x4d", num_epochs=100.0, arg=arg)
