"""Stems: the layers before the first residual stage.

A stem is a module class built as ``stem(width=, conv=, norm=, act=, name=)``
and applied as ``stem(x, train)``; ``ResNet`` passes it the network's conv, norm
and activation. The two of the papers keep their layers named ``stem_conv`` and
``stem_bn`` at the top level of the network's parameters.
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax

from resnet_jax.models.layers import Activation, he_conv
from resnet_jax.models.norm import BatchNorm
from resnet_jax.models.parts import PartTable

ModuleDef = Any


class ConvStem(nn.Module):
  """Convolution, norm, activation, then an optional max-pool (the papers' two stems)."""
  width: int = 64
  conv: ModuleDef = he_conv
  norm: ModuleDef = BatchNorm
  act: Activation = nn.relu
  kernel: ClassVar[int] = 7
  strides: ClassVar[int] = 2
  max_pool: ClassVar[bool] = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    pad = self.kernel // 2
    x = self.conv(self.width, (self.kernel, self.kernel), (self.strides, self.strides),
                  padding=((pad, pad), (pad, pad)), name="stem_conv")(x)
    x = self.act(self.norm(name="stem_bn")(x, train=train))
    if self.max_pool:
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    return x


class ImageNetStem(ConvStem):
  """7×7/2 convolution, norm, activation, 3×3/2 max-pool: ``conv1`` + pool of He et al. 2015, Table 1."""


class CifarStem(ConvStem):
  """3×3 convolution, norm, activation: the first layer of the CIFAR nets (He et al. 2015, §4.2)."""
  width: int = 16
  kernel: ClassVar[int] = 3
  strides: ClassVar[int] = 1
  max_pool: ClassVar[bool] = False


STEMS = PartTable("stem", {"imagenet": ImageNetStem, "cifar": CifarStem}, "a stem module class")
