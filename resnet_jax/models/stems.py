"""Stems: the layers before the first residual stage.

A stem is a module class built as ``stem(width=, conv=, norm=, act=, name=)``
and applied as ``stem(x, train)``; ``ResNet`` passes it the network's conv, norm
and activation, and ``anti_alias`` where the stem declares that field. The built-in
stems keep their layers named ``stem_conv``, ``stem_bn``, ... at the top level of the
network's parameters. ``width`` is the stem's output channels.

Two class attributes tell the network what the stem did: ``reduction``, its total stride
(for ``output_stride``), and ``activates``, whether its output is already normalised and
activated (a pre-activation network's first unit then skips its own BN-ReLU).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.anti_alias import stem_pool
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
  anti_alias: Optional[Callable[..., jax.Array]] = None
  kernel: ClassVar[int] = 7
  strides: ClassVar[int] = 2
  max_pool: ClassVar[bool] = True
  reduction: ClassVar[int] = 4
  activates: ClassVar[bool] = True

  def conv_norm_act(self, x: jax.Array, features: int, kernel: int, strides: int, suffix: str,
                    train: bool) -> jax.Array:
    """One `kernel`×`kernel` convolution (padded to keep the size / `strides`), norm, activation."""
    pad = kernel // 2
    x = self.conv(features, (kernel, kernel), (strides, strides), padding=((pad, pad), (pad, pad)),
                  name=f"stem_conv{suffix}")(x)
    return self.act(self.norm(name=f"stem_bn{suffix}")(x, train=train))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.conv_norm_act(x, self.width, self.kernel, self.strides, "", train)
    return stem_pool(x, self.anti_alias) if self.max_pool else x


class ImageNetStem(ConvStem):
  """7×7/2 convolution, norm, activation, 3×3/2 max-pool: ``conv1`` + pool of He et al. 2015, Table 1."""


class CifarStem(ConvStem):
  """3×3 convolution, norm, activation: the first layer of the CIFAR nets (He et al. 2015, §4.2)."""
  width: int = 16
  kernel: ClassVar[int] = 3
  strides: ClassVar[int] = 1
  max_pool: ClassVar[bool] = False
  reduction: ClassVar[int] = 1


class DeepStem(ConvStem):
  """He et al. 2019 ("Bag of Tricks", §4.1, Fig. 2b, "ResNet-C"): the 7×7 convolution becomes
  three 3×3 ones (the first with stride 2; widths width/2, width/2, width), each with norm
  and activation, then the 3×3/2 max-pool. timm's ``stem_type="deep"`` (its ``stem_width`` is
  our width/2)."""

  def deep(self, x: jax.Array, train: bool) -> jax.Array:
    inner = self.width // 2
    x = self.conv_norm_act(x, inner, 3, 2, "1", train)
    x = self.conv_norm_act(x, inner, 3, 1, "2", train)
    return self.conv_norm_act(x, self.width, 3, 1, "3", train)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return stem_pool(self.deep(x, train), self.anti_alias)


class DeepStridedStem(DeepStem):
  """The deep stem whose max-pool is a fourth 3×3 convolution with stride 2, norm and
  activation (ResNet-RS, Bello et al. 2021, as timm's ``replace_stem_pool=True``); anti-aliased,
  the convolution keeps stride 1 and the filter subsamples before the norm, as timm does."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.deep(x, train)
    if self.anti_alias is None:
      return self.conv_norm_act(x, self.width, 3, 2, "4", train)
    x = self.conv(self.width, (3, 3), (1, 1), padding=((1, 1), (1, 1)), name="stem_conv4")(x)
    return self.act(self.norm(name="stem_bn4")(self.anti_alias(x, 2), train=train))


class PreActStem(nn.Module):
  """7×7/2 convolution and 3×3/2 max-pool, no norm: the stem of timm's pre-activation
  ``resnetv2_50``, whose first unit normalises its input itself (He et al. 2016, Fig. 4e)."""
  width: int = 64
  conv: ModuleDef = he_conv
  norm: ModuleDef = BatchNorm
  act: Activation = nn.relu
  reduction: ClassVar[int] = 4
  activates: ClassVar[bool] = False
  zero_padded_pool: ClassVar[bool] = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="stem_conv")(x)
    if self.zero_padded_pool:  # BiT pads with zeros, then pools without padding
      x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
      return nn.max_pool(x, (3, 3), (2, 2))
    return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


class BiTStem(PreActStem):
  """BiT's root block (Kolesnikov et al. 2020; big_vision ``bit.py``, timm ``stem_type="fixed"``):
  7×7/2 convolution, zero padding by one, 3×3/2 max-pool without padding; no norm. The zeros
  differ from the usual −∞ padding where the (not yet activated) convolution is negative."""
  zero_padded_pool: ClassVar[bool] = True


STEMS = PartTable("stem", {
    "imagenet": ImageNetStem,
    "cifar": CifarStem,
    "deep": DeepStem,
    "deep_strided": DeepStridedStem,
    "preact": PreActStem,
    "bit": BiTStem,
}, "a stem module class")
