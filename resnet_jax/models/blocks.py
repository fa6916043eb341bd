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

Three additions act on the residual branch F(x) in every order: channel attention
(``attention``, e.g. Squeeze-and-Excitation, Hu et al. 2018) rescales its output, stochastic
depth (``drop_path_rate``, Huang et al. 2016) drops it for some examples in training, both
before the shortcut adds it; anti-aliasing (``anti_alias``, Zhang 2019) moves a convolution's
stride into a blur after it. Dilation (``dilation``, ``first_dilation``) replaces strides in
dilated backbones. The units that start as their shortcut (``identity_init``: SkipInit, ReZero,
Fixup; ``identity_init.py``) rescale F(x) after the attention, and Fixup adds a scalar bias
before each convolution and activation of the branch (``scalar_bias``) and rescales the
branch's initialisation (``branch_kernel_scale``). Each costs nothing where it is off: the unit
then builds the same ops.

A new block subclasses ``ResidualUnit``: it says which convolutions form its
branch (``branch``) and how much wider than its stage width it is (``expansion``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Optional, Sequence, Tuple

import flax.linen as nn
import jax

from resnet_jax.errors import InputError
from resnet_jax.models.drop_path import drop_path
from resnet_jax.models.layers import Activation, he_conv
from resnet_jax.models.norm import BatchNorm, NoNorm
from resnet_jax.models.parts import part_class
from resnet_jax.models.shortcuts import ProjectionShortcut

ModuleDef = Any

UNIT_ORDERS = ("original", "bn_after_add", "relu_before_add", "relu_preact", "full_preact")
PREACT_ORDERS = ("relu_preact", "full_preact")
STRIDE_PLACEMENTS = ("conv1x1", "conv3x3")


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """One convolution of a residual branch (``dilation`` > 1: an atrous one, padded to keep size)."""
  features: int
  kernel: int
  strides: int = 1
  groups: int = 1
  dilation: int = 1


def _declares(factory: Any, field: str) -> bool:
  """Whether the module class behind `factory` (a class or a partial of one) has `field`."""
  cls = part_class(factory)
  return cls is not None and dataclasses.is_dataclass(cls) and any(
      f.name == field for f in dataclasses.fields(cls))


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
    attention: None, or a constructor ``attention(name=)`` of a module applied to the
      branch's output (``attention.py``: Squeeze-and-Excitation, ECA).
    drop_path_rate: stochastic depth (Huang et al. 2016): in training, each example skips
      the branch with this probability, kept branches divided by 1 − rate (``drop_path.py``;
      needs a ``"dropout"`` rng).
    anti_alias: None, or a function ``aa(x, strides)``: a strided convolution then keeps
      stride 1 and ``aa`` subsamples after its norm and activation (Zhang 2019; ``anti_alias.py``).
    dilation: dilation of the 3×3 convolutions (a dilated backbone's later stages).
    first_dilation: the dilation of the unit's first 3×3 where it differs (the first unit
      of a newly dilated stage keeps the previous stage's, as timm and DeepLab); None: ``dilation``.
    identity_init: None, or a constructor ``identity_init(name=)`` of a module applied to F(x)
      after the attention (``identity_init.py``: SkipInit's and ReZero's α·F, Fixup's F·s + b).
    scalar_bias: None, or a constructor ``scalar_bias(name=)`` of Fixup's scalar bias, added
      before each convolution (``bias{i}a``) and each activation (``bias{i}b``) of the branch
      (Zhang et al. 2019, §3, rule 3; the authors' names).
    branch_kernel_scale: None, or the factor on the He initialisation (fan-out) of the branch's
      convolutions but the last, which then starts at 0 (Fixup's rules 1-2: L^(-1/(2m-2))).
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
  attention: Optional[ModuleDef] = None
  drop_path_rate: float = 0.0
  anti_alias: Optional[Callable[..., jax.Array]] = None
  dilation: int = 1
  first_dilation: Optional[int] = None
  identity_init: Optional[ModuleDef] = None
  scalar_bias: Optional[ModuleDef] = None
  branch_kernel_scale: Optional[float] = None

  def branch(self, in_features: int) -> Sequence[ConvSpec]:  # overridden by every block
    raise TypeError(f"{type(self).__name__} must define branch(); use BasicBlock or BottleneckBlock")

  @property
  def entry_dilation(self) -> int:
    """The dilation of the branch's first 3×3 (``first_dilation``, else ``dilation``)."""
    return self.first_dilation or self.dilation

  @property
  def _zeroes_last_kernel(self) -> bool:
    """Whether the branch's last convolution starts at 0: Fixup's, or zero-init residual where the
    branch ends in a convolution (or its norm has no scale to zero)."""
    if self.branch_kernel_scale is not None:
      return True
    ends_in_conv = self.unit_order in ("full_preact", "bn_after_add") or part_class(self.norm) is NoNorm
    return self.zero_init_residual and ends_in_conv

  def _conv(self, spec: ConvSpec, index: int, last: bool):
    pad = spec.dilation * (spec.kernel // 2)
    kwargs = {}
    if last and self._zeroes_last_kernel:
      kwargs["kernel_init"] = nn.initializers.zeros
    elif self.branch_kernel_scale is not None:  # He et al. 2015's fan-out normal, times Fixup's factor
      kwargs["kernel_init"] = nn.initializers.variance_scaling(
          2.0 * self.branch_kernel_scale ** 2, "fan_out", "normal")
    if spec.dilation > 1:
      kwargs["kernel_dilation"] = (spec.dilation, spec.dilation)
    strides = 1 if self._blurred(spec) else spec.strides
    return self.conv(spec.features, (spec.kernel, spec.kernel), (strides, strides),
                     padding=((pad, pad), (pad, pad)), feature_group_count=spec.groups,
                     name=f"conv{index}", **kwargs)

  def _norm(self, name: str, zero: bool = False):
    if zero and self.zero_init_residual:
      return self.norm(name=name, scale_init=nn.initializers.zeros)
    return self.norm(name=name)

  def _bias(self, y: jax.Array, name: str) -> jax.Array:
    """Fixup's scalar bias `name` added to `y`; `y` itself where there are none."""
    return y if self.scalar_bias is None else self.scalar_bias(name=name)(y)

  def _blurred(self, spec: ConvSpec) -> bool:
    """Whether `spec`'s stride moves into the anti-aliasing filter after it."""
    return self.anti_alias is not None and spec.strides > 1

  def _subsample(self, y: jax.Array, spec: ConvSpec) -> jax.Array:
    return self.anti_alias(y, spec.strides) if self._blurred(spec) else y

  def _preact_branch(self, x: jax.Array, specs: Sequence[ConvSpec], train: bool) -> Tuple[jax.Array, jax.Array]:
    """(BN-)ReLU before each convolution (Identity Mappings, Fig. 4d-e): (pre-activated x, F(x))."""
    n = len(specs)
    full = self.unit_order == "full_preact"
    if self.first_unit:
      preactivated = x
    else:
      preactivated = self.act(self._bias(self._norm("bn1")(x, train=train) if full else x, "bias1b"))
    y = preactivated
    for i, spec in enumerate(specs, start=1):
      if i > 1:
        y = self.act(self._bias(self._norm(f"bn{i}")(y, train=train) if full else y, f"bias{i}b"))
      y = self._conv(spec, i, last=i == n)(self._bias(y, f"bias{i}a"))
      if not full:
        y = self._norm(f"bn{i}", zero=i == n)(y, train=train)
      y = self._subsample(y, spec)
    return preactivated, y

  def _postact_branch(self, x: jax.Array, specs: Sequence[ConvSpec], train: bool) -> jax.Array:
    """Conv-BN-ReLU steps (Fig. 4a-c); the last step's BN and ReLU depend on the order."""
    n = len(specs)
    order = self.unit_order
    y = x
    for i, spec in enumerate(specs, start=1):
      last = i == n
      y = self._conv(spec, i, last=last)(y if i == 1 else self._bias(y, f"bias{i}a"))
      if not (last and order == "bn_after_add"):
        y = self._norm(f"bn{i}", zero=last)(y, train=train)
      if not last or order == "relu_before_add":
        y = self.act(self._bias(y, f"bias{i}b"))
      y = self._subsample(y, spec)
    return y

  def _on_branch(self, y: jax.Array, train: bool) -> jax.Array:
    """Attention, the identity-at-initialisation rescaling, then stochastic depth, on the branch's
    output F(x) (timm's order for the first and last)."""
    if self.attention is not None:
      y = self.attention(name="attention")(y)
    if self.identity_init is not None:
      y = self.identity_init(name="identity_init")(y)
    if train and self.drop_path_rate > 0:
      y = drop_path(y, self.drop_path_rate, self.make_rng("dropout"))
    return y

  def _shortcut(self):
    """The shortcut module; the stage's dilation reaches one that reads it (ResNet-D's pooling)."""
    extra = {"dilation": self.dilation} if self.dilation > 1 and _declares(self.shortcut, "dilation") else {}
    return self.shortcut(features=self.features, strides=self.strides, conv=self.conv,
                         norm=None if self.unit_order in PREACT_ORDERS else self.norm, name="shortcut", **extra)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.unit_order not in UNIT_ORDERS:
      raise InputError(f"unknown unit_order {self.unit_order!r}: valid choices are {', '.join(UNIT_ORDERS)}")
    specs = list(self.branch(x.shape[-1]))
    order = self.unit_order
    if order in PREACT_ORDERS:
      preactivated, y = self._preact_branch(x, specs, train)
    else:
      # Fixup's first bias also feeds a shortcut that changes the shape (the authors' code).
      shifted = self._bias(x, "bias1a")
      y = self._postact_branch(shifted, specs, train)
      preactivated = x = shifted if self.strides != 1 or x.shape[-1] != self.features else x
    y = self._on_branch(y, train)
    out = self._shortcut()(x, y, train=train, preactivated=preactivated)
    if order == "original":
      out = self.act(out)
    elif order == "bn_after_add":
      out = self.act(self._norm("bn_out")(out, train=train))
    return out


class BasicBlock(ResidualUnit):
  """Two 3×3 convolutions (He et al. 2015, Fig. 5 left); the stride is on the first."""
  expansion: ClassVar[int] = 1

  def branch(self, in_features: int) -> Sequence[ConvSpec]:
    return (ConvSpec(self.features, 3, self.strides, dilation=self.entry_dilation),
            ConvSpec(self.features, 3, 1, dilation=self.dilation))


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
      raise InputError(f"unknown stride_on {self.stride_on!r}: valid choices are {', '.join(STRIDE_PLACEMENTS)}")
    inner = self.bottleneck_features or self.features // 4
    if inner % self.cardinality:
      raise InputError(f"bottleneck width {inner} is not divisible by cardinality {self.cardinality}")
    s1, s3 = (self.strides, 1) if self.stride_on == "conv1x1" else (1, self.strides)
    return (ConvSpec(inner, 1, s1), ConvSpec(inner, 3, s3, self.cardinality, dilation=self.entry_dilation),
            ConvSpec(self.features, 1, 1))


class ResNeXtBlock(BottleneckBlock):
  """ResNeXt bottleneck (Xie et al. 2017): grouped 3×3, stride on the 3×3 by default."""
  cardinality: int = 32
  stride_on: str = "conv3x3"
