"""ResNet-50 (v1.5) with "ResNet strikes back" procedure A2 (Wightman et al. 2021, Table 1)."""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return base.rsb_config("a2", arg=arg)
