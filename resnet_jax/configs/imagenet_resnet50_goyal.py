"""ResNet-50 at batch 8k with the linear scaling rule and gradual warm-up (Goyal et al. 2017)."""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return base.goyal_config(arg=arg)
