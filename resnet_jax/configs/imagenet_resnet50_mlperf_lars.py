"""MLPerf Training's ResNet-50 v1.5 with LARS at batch 4096 (mlcommons/training v1.0 reference)."""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return base.mlperf_lars_config(arg=arg)
