"""Residual units: basic (two 3×3), bottleneck (1×1-3×3-1×1) and ResNeXt.

Every unit is assembled in one of the five orders of He et al. 2016 ("Identity
Mappings"), Fig. 4, chosen with ``unit_order``:

  ``original``        (a) conv-BN-ReLU-conv-BN, add, ReLU   (He et al. 2015)
  ``bn_after_add``    (b) conv-BN-ReLU-conv, add, BN-ReLU
  ``relu_before_add`` (c) conv-BN-ReLU-conv-BN-ReLU, add
  ``relu_preact``     (d) ReLU-conv-BN-ReLU-conv-BN, add
  ``full_preact``     (e) BN-ReLU-conv-BN-ReLU-conv, add

The shortcut is a module of its own (``shortcuts.py``) that merges input and
residual branch, so every shortcut combines with every order and block.

A new block subclasses ``ResidualUnit``: it says which convolutions form its
branch (``branch``) and how much wider than its stage width it is (``expansion``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional, Sequence

import flax.linen as nn
import jax

from resnet_jax import errors
from resnet_jax.models.layers import Activation, he_conv
from resnet_jax.models.norm import BatchNorm
from resnet_jax.models.shortcuts import ProjectionShortcut

ModuleDef = Any

UNIT_ORDERS = ("original", "bn_after_add", "relu_before_add", "relu_preact", "full_preact")
PREACT_ORDERS = ("relu_preact", "full_preact")
STRIDE_PLACEMENTS = ("conv1x1", "conv3x3")


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """One convolution of a residual branch."""
  features: int
  kernel: int
  strides: int = 1
  groups: int = 1


class ResidualUnit(nn.Module):
  """A residual unit; subclasses say which convolutions form the branch (``branch``).

  Applied as ``unit(x, train)``. With its defaults a unit stands alone, e.g.
  ``BasicBlock(features=16)``: the papers' bias-free He-initialised convolution,
  ``BatchNorm``, and option B shortcuts (a 1×1 projection + BN where the shape
  changes, the identity elsewhere). ``ResNet`` passes its own choices.

  Class attribute ``expansion``: output channels / stage width (1 basic, 4 bottleneck),
  from which ``ResNet`` sets ``features``.

  Attributes:
    features: output channels of the unit.
    strides: spatial stride of the unit (2 at the first unit of a down-sampling stage).
    conv: ``flax.linen.Conv``-compatible constructor (dtype, initialiser and bias bound).
    norm: norm constructor, ``norm(name=, [scale_init=])`` applied as ``m(x, train=)``.
    shortcut: shortcut factory, e.g. from ``shortcuts.make_shortcut``.
    act: the activation.
    unit_order: one of ``UNIT_ORDERS``.
    first_unit: for pre-activation orders, the unit right after the stem, whose
      input the stem's BN-ReLU has already activated (Identity Mappings, appendix).
    zero_init_residual: initialise the branch's last BN scale (or, for orders whose
      branch ends in a convolution, its last kernel) to zero, so the unit starts as
      its shortcut (Goyal et al. 2017). Off by default, as in the papers.
  """
  expansion: ClassVar[int] = 1

  features: int
  strides: int = 1
  conv: ModuleDef = he_conv
  norm: ModuleDef = BatchNorm
  shortcut: ModuleDef = ProjectionShortcut
  act: Activation = nn.relu
  unit_order: str = "original"
  first_unit: bool = False
  zero_init_residual: bool = False

  def branch(self, in_features: int) -> Sequence[ConvSpec]:  # overridden by every block
    raise TypeError(f"{type(self).__name__} must define branch(); use BasicBlock or BottleneckBlock")

  def _conv(self, spec: ConvSpec, index: int, last: bool):
    pad = spec.kernel // 2
    kwargs = {}
    if last and self.zero_init_residual and self.unit_order in ("full_preact", "bn_after_add"):
      kwargs["kernel_init"] = nn.initializers.zeros
    return self.conv(spec.features, (spec.kernel, spec.kernel), (spec.strides, spec.strides),
                     padding=((pad, pad), (pad, pad)), feature_group_count=spec.groups,
                     name=f"conv{index}", **kwargs)

  def _norm(self, name: str, zero: bool = False):
    if zero and self.zero_init_residual:
      return self.norm(name=name, scale_init=nn.initializers.zeros)
    return self.norm(name=name)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.unit_order not in UNIT_ORDERS:
      raise errors.InputError(f"unknown unit_order {self.unit_order!r}: valid choices are {', '.join(UNIT_ORDERS)}")
    specs = list(self.branch(x.shape[-1]))
    n = len(specs)
    order = self.unit_order

    if order == "full_preact":
      preactivated = x if self.first_unit else self.act(self._norm("bn1")(x, train=train))
      y = preactivated
      for i, spec in enumerate(specs, start=1):
        if i > 1:
          y = self.act(self._norm(f"bn{i}")(y, train=train))
        y = self._conv(spec, i, last=i == n)(y)
    elif order == "relu_preact":
      preactivated = x if self.first_unit else self.act(x)
      y = preactivated
      for i, spec in enumerate(specs, start=1):
        if i > 1:
          y = self.act(y)
        y = self._conv(spec, i, last=i == n)(y)
        y = self._norm(f"bn{i}", zero=i == n)(y, train=train)
    else:
      preactivated = x
      y = x
      for i, spec in enumerate(specs, start=1):
        last = i == n
        y = self._conv(spec, i, last=last)(y)
        if not (last and order == "bn_after_add"):
          y = self._norm(f"bn{i}", zero=last)(y, train=train)
        if not last or order == "relu_before_add":
          y = self.act(y)

    out = self.shortcut(features=self.features, strides=self.strides, conv=self.conv,
                        norm=None if order in PREACT_ORDERS else self.norm,
                        name="shortcut")(x, y, train=train, preactivated=preactivated)
    if order == "original":
      out = self.act(out)
    elif order == "bn_after_add":
      out = self.act(self._norm("bn_out")(out, train=train))
    return out


class BasicBlock(ResidualUnit):
  """Two 3×3 convolutions (He et al. 2015, Fig. 5 left); the stride is on the first."""
  expansion: ClassVar[int] = 1

  def branch(self, in_features: int) -> Sequence[ConvSpec]:
    return (ConvSpec(self.features, 3, self.strides), ConvSpec(self.features, 3, 1))


class BottleneckBlock(ResidualUnit):
  """1×1 reduce, 3×3, 1×1 expand (He et al. 2015, Fig. 5 right).

  With ``cardinality`` > 1 the 3×3 is a grouped convolution: the ResNeXt block of
  Xie et al. 2017, Fig. 3(c), equivalent to the split-transform-merge form 3(a).

  Attributes:
    bottleneck_features: channels of the 1×1-3×3 part (``features / 4`` for ResNet,
      C·d for ResNeXt).
    cardinality: number of groups C of the 3×3 convolution.
    stride_on: ``"conv1x1"`` puts the stride on the first 1×1 (the paper, "v1");
      ``"conv3x3"`` on the 3×3 (fb.resnet.torch / torchvision, "v1.5", and ResNeXt).
  """
  expansion: ClassVar[int] = 4

  bottleneck_features: Optional[int] = None
  cardinality: int = 1
  stride_on: str = "conv1x1"

  def branch(self, in_features: int) -> Sequence[ConvSpec]:
    if self.stride_on not in STRIDE_PLACEMENTS:
      raise errors.InputError(f"unknown stride_on {self.stride_on!r}: valid choices are {', '.join(STRIDE_PLACEMENTS)}")
    inner = self.bottleneck_features or self.features // 4
    if inner % self.cardinality:
      raise errors.InputError(f"bottleneck width {inner} is not divisible by cardinality {self.cardinality}")
    s1, s3 = (self.strides, 1) if self.stride_on == "conv1x1" else (1, self.strides)
    return (ConvSpec(inner, 1, s1), ConvSpec(inner, 3, s3, self.cardinality), ConvSpec(self.features, 1, 1))


class ResNeXtBlock(BottleneckBlock):
  """ResNeXt bottleneck (Xie et al. 2017): grouped 3×3, stride on the 3×3 by default."""
  cardinality: int = 32
  stride_on: str = "conv3x3"
