"""Shortcut connections studied in the three papers.

A shortcut module merges the unit's input with its residual branch:
``shortcut(x, residual, train=..., preactivated=...)`` returns what the unit adds
up (before any post-addition BN/ReLU). ``x`` is the unit's raw input; for
pre-activation units ``preactivated`` is BN-ReLU(x), which feeds any convolution
on the shortcut (He et al. 2016, "Identity Mappings", appendix).

He et al. 2015 ("Deep Residual Learning"), §3.3 / Table 3:
  * ``ZeroPadShortcut`` (option A): identity; where shapes change, stride-2
    subsampling and zero channels, no parameters.
  * ``ProjectionShortcut`` (option B: only where shapes change; option C,
    ``always=True``: on every unit): 1×1 convolution + BN.
He et al. 2016 ("Identity Mappings"), Fig. 2 / Table 1:
  * ``ScaledShortcut``: λ·h(x) (and optionally λ·F).
  * ``GatedShortcut``: exclusive gating g·F + (1−g)·h(x), or shortcut-only
    gating F + (1−g)·h(x), with g = σ(1×1 conv(x) + b_g).
  * ``Conv1x1Shortcut``: a 1×1 convolution on every shortcut.
  * ``DropoutShortcut``: dropout on the shortcut.
  * ``NoShortcut``: plain networks.
For the variants, h is the identity, and where shapes change it is option A or B
(``downsample``).
He et al. 2019 ("Bag of Tricks"), §4.1, "ResNet-D": the projection shortcut (B, C) can
average-pool 2×2 before a stride-1 1×1 convolution (``avg_down``) instead of striding the 1×1,
which skips three quarters of its input.

Every shortcut shares the fields of ``Shortcut`` (``features``, ``strides``, ``conv``,
``norm``); its own fields are its *options*, which a network passes as one mapping
(``ResNet(shortcut="scale", shortcut_options={"scale": 0.5})``) and
``check_options`` validates in one line each.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.errors import InputError
from resnet_jax.models.parts import PartTable, check_options, is_number, option_names

ModuleDef = Any
DOWNSAMPLES = ("A", "B")


def zero_pad_identity(x: jax.Array, features: int, strides: int) -> jax.Array:
  """Option A: subsample by ``strides`` and append zero channels up to ``features``."""
  if strides > 1:
    x = x[:, ::strides, ::strides, :]
  extra = features - x.shape[-1]
  if extra < 0:
    raise InputError(
        f"option A (zero-padding) shortcut cannot shrink {x.shape[-1]} channels to {features}; "
        "use a projection shortcut ('B' or 'C')")
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
  return x


def avg_down_pool(x: jax.Array, strides: int, dilation: int = 1) -> jax.Array:
  """ResNet-D's pooling before a projection (He et al. 2019, Fig. 2c), as timm computes it.

  Strided: a 2×2 average with stride `strides` whose last window on an odd side covers what
  is left (PyTorch's ``ceil_mode=True``, the padding not counted). In a dilated stage
  (``output_stride``) the projection does not stride: timm still averages 2×2 with stride 1,
  zero-padded after the last row and column ("SAME", the zeros counted).
  """
  if strides > 1:
    extra = [(0, max(-(-(n - 2) // strides) * strides + 2 - n, 0)) for n in x.shape[1:3]]
    padding = extra if any(e for _, e in extra) else "VALID"
    return nn.avg_pool(x, (2, 2), (strides, strides), padding=padding, count_include_pad=False)
  if dilation > 1:
    return nn.avg_pool(x, (2, 2), (1, 1), padding=((0, 1), (0, 1)), count_include_pad=True)
  return x


class Shortcut(nn.Module):
  """The fields every shortcut has, and what several of them compute.

  Subclasses add their options as fields and say how each option's value is checked
  (``OPTION_CHECKS``: option -> (test, "what it must be")); fields that a shortcut's
  name decides (``NAMED_BY``: "C" is a projection ``always``) are not options.
  """
  OPTION_CHECKS: ClassVar[Dict[str, Tuple[Callable[[Any], bool], str]]] = {}
  NAMED_BY: ClassVar[Tuple[str, ...]] = ()

  features: int
  strides: int = 1
  conv: ModuleDef = nn.Conv
  norm: Optional[ModuleDef] = None

  def shape_changes(self, x: jax.Array) -> bool:
    return self.strides != 1 or x.shape[-1] != self.features

  def project(self, x: jax.Array, preactivated: Optional[jax.Array], train: bool, avg_down: bool = False,
              dilation: int = 1) -> jax.Array:
    """A 1×1 convolution (+ norm, unless pre-activated units pass none) of the unit's input;
    with `avg_down` after ResNet-D's average pooling, the convolution then not strided."""
    source = x if preactivated is None else preactivated
    strides = self.strides
    if avg_down:
      source, strides = avg_down_pool(source, self.strides, dilation), 1
    h = self.conv(self.features, (1, 1), (strides, strides), name="projection_conv")(source)
    if self.norm is not None:
      h = self.norm(name="projection_bn")(h, train=train)
    return h

  @classmethod
  def option_names(cls) -> Tuple[str, ...]:
    common = {f.name for f in dataclasses.fields(Shortcut)} | set(cls.NAMED_BY) | {"dilation"}
    return option_names(cls, common)


class _IdentityVariant(Shortcut):
  """Identity Mappings variants: h(x) is the identity, option A or B where shapes change."""
  OPTION_CHECKS: ClassVar = {"downsample": (lambda v: v in DOWNSAMPLES, "'A' (zero-pad) or 'B' (projection)")}

  downsample: str = "A"

  def identity_or_downsample(self, x, preactivated, train: bool) -> jax.Array:
    if not self.shape_changes(x):
      return x
    if self.downsample == "A":
      return zero_pad_identity(x, self.features, self.strides)
    return self.project(x, preactivated, train)


class ZeroPadShortcut(Shortcut):
  """Option A: parameter-free identity shortcut (He et al. 2015, §3.3)."""

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    return zero_pad_identity(x, self.features, self.strides) + residual


class ProjectionShortcut(Shortcut):
  """Options B and C: 1×1 convolution + BN where shapes change (B) or always (C).

  ``norm=None`` gives the conv-only projection of pre-activation units, whose
  input is already batch-normalised. ``avg_down``: ResNet-D (He et al. 2019, Fig. 2c), a 2×2
  average pool and a stride-1 1×1 convolution instead of the strided 1×1.
  ``dilation``: the stage's dilation in a dilated backbone (set by the unit, not an option).
  """
  OPTION_CHECKS: ClassVar = {"avg_down": (lambda v: isinstance(v, bool), "True or False")}
  NAMED_BY: ClassVar = ("always",)

  always: bool = False
  avg_down: bool = False
  dilation: int = 1

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    if not (self.always or self.shape_changes(x)):
      return x + residual
    return self.project(x, preactivated, train, self.avg_down, self.dilation) + residual


class ScaledShortcut(_IdentityVariant):
  """Constant scaling λ·h(x) + (λ or 1)·F (Identity Mappings, Table 1)."""
  OPTION_CHECKS: ClassVar = {**_IdentityVariant.OPTION_CHECKS,
                             "scale": (is_number, "a number"),
                             "scale_residual": (lambda v: isinstance(v, bool), "True or False")}

  scale: float = 0.5
  scale_residual: bool = False

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    h = self.identity_or_downsample(x, preactivated, train)
    f_scale = self.scale if self.scale_residual else 1.0
    return self.scale * h + f_scale * residual


class GatedShortcut(_IdentityVariant):
  """Gating g(x) = σ(W_g x + b_g), W_g a 1×1 conv (Identity Mappings, §3.1).

  ``exclusive=True``: g·F + (1−g)·h(x) (Highway-style exclusive gating);
  ``exclusive=False``: F + (1−g)·h(x) (shortcut-only gating). The paper's best
  results used b_g initialised to −6.
  """
  OPTION_CHECKS: ClassVar = {**_IdentityVariant.OPTION_CHECKS,
                             "gate_bias_init": (is_number, "a number")}
  NAMED_BY: ClassVar = ("exclusive",)

  exclusive: bool = True
  gate_bias_init: float = -6.0

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    source = x if preactivated is None else preactivated
    gate = self.conv(self.features, (1, 1), (self.strides, self.strides), use_bias=True,
                     bias_init=nn.initializers.constant(self.gate_bias_init), name="gate_conv")(source)
    g = nn.sigmoid(gate)
    h = self.identity_or_downsample(x, preactivated, train)
    f = g * residual if self.exclusive else residual
    return f + (1.0 - g) * h


class Conv1x1Shortcut(Shortcut):
  """A 1×1 convolution (no BN) on every shortcut (Identity Mappings, Table 1)."""

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    source = x if preactivated is None else preactivated
    h = self.conv(self.features, (1, 1), (self.strides, self.strides), name="shortcut_conv")(source)
    return h + residual


class DropoutShortcut(_IdentityVariant):
  """Dropout on the shortcut, rate 0.5 in the paper (Identity Mappings, Table 1).

  Needs a ``"dropout"`` rng when ``train=True``.
  """
  OPTION_CHECKS: ClassVar = {**_IdentityVariant.OPTION_CHECKS,
                             "rate": (lambda v: is_number(v) and 0.0 <= v < 1.0, "a number in [0.0, 1.0)")}

  rate: float = 0.5

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    h = self.identity_or_downsample(x, preactivated, train)
    h = nn.Dropout(self.rate, deterministic=not train)(h)
    return h + residual


class NoShortcut(Shortcut):
  """No shortcut: the unit is a plain stack of layers (He et al. 2015, plain nets)."""

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    return residual


# Named shortcuts: a class, with the options its name fixes.
SHORTCUTS = PartTable("shortcut", {
    "A": ZeroPadShortcut,
    "B": ProjectionShortcut,
    "C": functools.partial(ProjectionShortcut, always=True),
    "scale": ScaledShortcut,
    "gate": functools.partial(GatedShortcut, exclusive=True),
    "shortcut_gate": functools.partial(GatedShortcut, exclusive=False),
    "conv1x1": Conv1x1Shortcut,
    "dropout": DropoutShortcut,
    "none": NoShortcut,
}, "a shortcut factory")


def shortcut_class(name: str) -> Tuple[type, Dict[str, Any]]:
  """The class of a named shortcut and the options its name fixes ("C": always=True)."""
  part = SHORTCUTS.resolve(name)
  if isinstance(part, functools.partial):
    return part.func, dict(part.keywords)
  return part, {}


def check_shortcut_options(name: str, options: Mapping[str, Any]) -> None:
  """One-line `InputError` for an option the named shortcut does not take, or a bad value."""
  cls, _ = shortcut_class(name)
  check_options("shortcut", name, cls.option_names(), cls.OPTION_CHECKS, options)


def shortcut_factory(name: str, options: Optional[Mapping[str, Any]] = None) -> Callable[..., nn.Module]:
  """The named shortcut with `options` bound: a factory taking ``features``, ``strides``,
  ``conv``, ``norm`` and ``name``, like every shortcut module."""
  options = dict(options or {})
  check_shortcut_options(name, options)
  cls, fixed = shortcut_class(name)
  return functools.partial(cls, **fixed, **options) if fixed or options else cls


def make_shortcut(kind: str, *, downsample: str = "A", scale: float = 0.5,
                  scale_residual: bool = False, gate_bias_init: float = -6.0,
                  dropout_rate: float = 0.5) -> Callable[..., nn.Module]:
  """The shortcut for a name in ``SHORTCUTS`` with those of these options that it reads.

  Kept for code written before ``shortcut_factory(name, options)``, which refuses an
  option the shortcut does not read instead of ignoring it.
  """
  if downsample not in DOWNSAMPLES:
    raise InputError(f"unknown downsample {downsample!r}: valid choices are 'A' (zero-pad) and 'B' (projection)")
  given = {"downsample": downsample, "scale": scale, "scale_residual": scale_residual,
           "gate_bias_init": gate_bias_init, "rate": dropout_rate}
  cls, _ = shortcut_class(kind)
  return shortcut_factory(kind, {k: v for k, v in given.items() if k in cls.option_names()})
