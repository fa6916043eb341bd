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
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any


def zero_pad_identity(x: jax.Array, features: int, strides: int) -> jax.Array:
  """Option A: subsample by ``strides`` and append zero channels up to ``features``."""
  if strides > 1:
    x = x[:, ::strides, ::strides, :]
  extra = features - x.shape[-1]
  if extra < 0:
    raise ValueError(
        f"option A (zero-padding) shortcut cannot shrink {x.shape[-1]} channels to {features}; "
        "use a projection shortcut ('B' or 'C')")
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
  return x


def _shape_changes(x: jax.Array, features: int, strides: int) -> bool:
  return strides != 1 or x.shape[-1] != features


class ZeroPadShortcut(nn.Module):
  """Option A: parameter-free identity shortcut (He et al. 2015, §3.3)."""
  features: int
  strides: int = 1
  conv: ModuleDef = nn.Conv
  norm: Optional[ModuleDef] = None

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    return zero_pad_identity(x, self.features, self.strides) + residual


class ProjectionShortcut(nn.Module):
  """Options B and C: 1×1 convolution + BN where shapes change (B) or always (C).

  ``norm=None`` gives the conv-only projection of pre-activation units, whose
  input is already batch-normalised.
  """
  features: int
  strides: int = 1
  conv: ModuleDef = nn.Conv
  norm: Optional[ModuleDef] = None
  always: bool = False

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    if not (self.always or _shape_changes(x, self.features, self.strides)):
      return x + residual
    source = x if preactivated is None else preactivated
    h = self.conv(self.features, (1, 1), (self.strides, self.strides), name="projection_conv")(source)
    if self.norm is not None:
      h = self.norm(name="projection_bn")(h, train=train)
    return h + residual


def _identity_or_downsample(module: nn.Module, x, preactivated, features: int, strides: int,
                            downsample: str, train: bool):
  """h(x) for the Identity-Mappings variants: identity, or option A/B where shapes change."""
  if not _shape_changes(x, features, strides):
    return x
  if downsample == "A":
    return zero_pad_identity(x, features, strides)
  source = x if preactivated is None else preactivated
  h = module.conv(features, (1, 1), (strides, strides), name="projection_conv")(source)
  if module.norm is not None:
    h = module.norm(name="projection_bn")(h, train=train)
  return h


class ScaledShortcut(nn.Module):
  """Constant scaling λ·h(x) + (λ or 1)·F (Identity Mappings, Table 1)."""
  features: int
  strides: int = 1
  conv: ModuleDef = nn.Conv
  norm: Optional[ModuleDef] = None
  downsample: str = "A"
  scale: float = 0.5
  scale_residual: bool = False

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    h = _identity_or_downsample(self, x, preactivated, self.features, self.strides, self.downsample, train)
    f_scale = self.scale if self.scale_residual else 1.0
    return self.scale * h + f_scale * residual


class GatedShortcut(nn.Module):
  """Gating g(x) = σ(W_g x + b_g), W_g a 1×1 conv (Identity Mappings, §3.1).

  ``exclusive=True``: g·F + (1−g)·h(x) (Highway-style exclusive gating);
  ``exclusive=False``: F + (1−g)·h(x) (shortcut-only gating). The paper's best
  results used b_g initialised to −6.
  """
  features: int
  strides: int = 1
  conv: ModuleDef = nn.Conv
  norm: Optional[ModuleDef] = None
  downsample: str = "A"
  exclusive: bool = True
  gate_bias_init: float = -6.0

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    source = x if preactivated is None else preactivated
    gate = self.conv(self.features, (1, 1), (self.strides, self.strides), use_bias=True,
                     bias_init=nn.initializers.constant(self.gate_bias_init), name="gate_conv")(source)
    g = nn.sigmoid(gate)
    h = _identity_or_downsample(self, x, preactivated, self.features, self.strides, self.downsample, train)
    f = g * residual if self.exclusive else residual
    return f + (1.0 - g) * h


class Conv1x1Shortcut(nn.Module):
  """A 1×1 convolution (no BN) on every shortcut (Identity Mappings, Table 1)."""
  features: int
  strides: int = 1
  conv: ModuleDef = nn.Conv
  norm: Optional[ModuleDef] = None

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    source = x if preactivated is None else preactivated
    h = self.conv(self.features, (1, 1), (self.strides, self.strides), name="shortcut_conv")(source)
    return h + residual


class DropoutShortcut(nn.Module):
  """Dropout on the shortcut, rate 0.5 in the paper (Identity Mappings, Table 1).

  Needs a ``"dropout"`` rng when ``train=True``.
  """
  features: int
  strides: int = 1
  conv: ModuleDef = nn.Conv
  norm: Optional[ModuleDef] = None
  downsample: str = "A"
  rate: float = 0.5

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    h = _identity_or_downsample(self, x, preactivated, self.features, self.strides, self.downsample, train)
    h = nn.Dropout(self.rate, deterministic=not train)(h)
    return h + residual


class NoShortcut(nn.Module):
  """No shortcut: the unit is a plain stack of layers (He et al. 2015, plain nets)."""
  features: int
  strides: int = 1
  conv: ModuleDef = nn.Conv
  norm: Optional[ModuleDef] = None

  @nn.compact
  def __call__(self, x, residual, *, train: bool, preactivated=None):
    return residual


SHORTCUTS = ("A", "B", "C", "scale", "gate", "shortcut_gate", "conv1x1", "dropout", "none")


def make_shortcut(kind: str, *, downsample: str = "A", scale: float = 0.5,
                  scale_residual: bool = False, gate_bias_init: float = -6.0,
                  dropout_rate: float = 0.5) -> Callable[..., nn.Module]:
  """The shortcut class for a name in ``SHORTCUTS``, with its options bound.

  The returned factory takes ``features``, ``strides``, ``conv``, ``norm`` and
  ``name``, like every shortcut module.
  """
  if downsample not in ("A", "B"):
    raise ValueError(f"unknown downsample {downsample!r}: valid choices are 'A' (zero-pad) and 'B' (projection)")
  table = {
      "A": ZeroPadShortcut,
      "B": ProjectionShortcut,
      "C": functools.partial(ProjectionShortcut, always=True),
      "scale": functools.partial(ScaledShortcut, downsample=downsample, scale=scale,
                                 scale_residual=scale_residual),
      "gate": functools.partial(GatedShortcut, downsample=downsample, exclusive=True,
                                gate_bias_init=gate_bias_init),
      "shortcut_gate": functools.partial(GatedShortcut, downsample=downsample, exclusive=False,
                                         gate_bias_init=gate_bias_init),
      "conv1x1": Conv1x1Shortcut,
      "dropout": functools.partial(DropoutShortcut, downsample=downsample, rate=dropout_rate),
      "none": NoShortcut,
  }
  if kind not in table:
    raise ValueError(f"unknown shortcut {kind!r}: valid choices are {', '.join(SHORTCUTS)}")
  return table[kind]
