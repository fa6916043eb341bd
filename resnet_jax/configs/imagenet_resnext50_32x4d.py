"""ImageNet ResNeXt-50 32x4d (Xie et al. 2017, Table 3; 100 epochs, ÷10 every 30).

The ResNeXt recipe: fb.resnet.torch's augmentation (scale + aspect crop, color jitter,
lighting) and Nesterov momentum.
"""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return base.imagenet_config("resnext50_32x4d", num_epochs=100.0, recipe="resnext", arg=arg)
