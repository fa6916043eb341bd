"""Residual units that start as their shortcut: SkipInit, ReZero and Fixup (``identity_init``).

Three papers train deep residual networks without normalisation by making every unit its
shortcut at initialisation, so that the network starts shallow in effect and its gradients
neither explode nor vanish with depth. The part is applied by every unit to its branch's
output F(x), after attention and before stochastic depth (``blocks.ResidualUnit._on_branch``):

* ``"skipinit"`` (De & Smith 2020, "SkipInit"): a learnable scalar α at the end of each
  residual branch, α = 0 at initialisation: x_{l+1} = h(x_l) + α_l·F(x_l).
* ``"rezero"`` (Bachlechner et al. 2020, "ReZero"): the same residual weight α_l,
  initialised to 0, proposed independently (x_{i+1} = x_i + α_i F(x_i)).
* ``"fixup"`` (Zhang, Dauphin & Ma 2019, §3, "Fixup"), for a network without normalisation
  (``norm="none"``): (1) the classifier and the last layer of each branch start at 0; (2) the
  other layers of each branch are He-initialised and scaled by L^(-1/(2m-2)), L the network's
  residual branches, m the layers of one; (3) a scalar multiplier (1) ends each branch, and a
  scalar bias (0) precedes each convolution, linear layer and element-wise activation.

A part is a module class ``part(name=, dtype=, param_dtype=, **identity_init_options)`` applied
as ``m(F)``; its class attributes tell the network what else it asks for (``SCALAR_BIASES``,
``ZERO_CLASSIFIER``, ``NEEDS_NO_NORM``, ``branch_kernel_scale``).
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.parts import PartTable, check_options, is_number, option_names, part_class


class IdentityInit(nn.Module):
  """What every identity-at-initialisation part is: a module applied to the branch output F.

  Class attributes (read by ``ResNet`` before it builds the units):
    SCALAR_BIASES: a scalar bias before each convolution and activation of the branches, the
      stem's activation and the classifier (Fixup's rule 3).
    ZERO_CLASSIFIER: the classifier's weights start at 0 (Fixup's rule 1).
    NEEDS_NO_NORM: the network must have ``norm="none"``.
  """
  SCALAR_BIASES: ClassVar[bool] = False
  ZERO_CLASSIFIER: ClassVar[bool] = False
  NEEDS_NO_NORM: ClassVar[bool] = False
  OPTION_CHECKS: ClassVar[dict] = {}

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @classmethod
  def branch_kernel_scale(cls, num_branches: int, branch_layers: int) -> Optional[float]:
    """The factor on the He initialisation of each branch's convolutions but the last (which
    then starts at 0); None: the convolutions keep their own initialisation."""
    return None


class ResidualWeight(IdentityInit):
  """α·F, α one learnable scalar per unit starting at ``alpha`` (0: the unit is its shortcut)."""
  OPTION_CHECKS: ClassVar = {"alpha": (is_number, "a number (0 in the papers)")}

  alpha: float = 0.0

  @nn.compact
  def __call__(self, branch: jax.Array) -> jax.Array:
    alpha = self.param("alpha", nn.initializers.constant(self.alpha), (), self.param_dtype)
    return branch * alpha.astype(self.dtype)


class SkipInit(ResidualWeight):
  """SkipInit (De & Smith 2020): a learnable scalar multiplier at the end of each residual
  branch, initialised to 0."""


class ReZero(ResidualWeight):
  """ReZero (Bachlechner et al. 2020): x_{i+1} = x_i + α_i·F(x_i), α_i initialised to 0."""


class Fixup(IdentityInit):
  """Fixup's end of a branch: F·s + b, the scalar multiplier s = 1 and bias b = 0 (Zhang et al.
  2019, §3, rule 3; ``scale`` and ``bias2b`` of the authors' code). With the branch's last
  convolution at 0 (rule 1), the unit starts as its shortcut."""
  SCALAR_BIASES: ClassVar[bool] = True
  ZERO_CLASSIFIER: ClassVar[bool] = True
  NEEDS_NO_NORM: ClassVar[bool] = True

  @classmethod
  def branch_kernel_scale(cls, num_branches: int, branch_layers: int) -> Optional[float]:
    """L^(-1/(2m-2)) (§3, rule 2): L residual branches of m layers (a basic unit: m = 2, L^-1/2)."""
    if branch_layers < 2:
      return 1.0
    return float(num_branches) ** (-1.0 / (2 * branch_layers - 2))

  @nn.compact
  def __call__(self, branch: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (), self.param_dtype)
    return branch * scale.astype(self.dtype) + bias.astype(self.dtype)


class ScalarBias(nn.Module):
  """Fixup's scalar bias (Zhang et al. 2019, §3, rule 3): x + b, one learnable b starting at 0.

  Applied as ``m(x)`` or, in a norm's place (the stem's, before its activation), ``m(x, train=)``.
  """
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:  # pylint: disable=unused-argument
    return x + self.param("bias", nn.initializers.zeros, (), self.param_dtype).astype(self.dtype)


IDENTITY_INITS = PartTable("identity_init", {
    "skipinit": SkipInit,
    "rezero": ReZero,
    "fixup": Fixup,
}, "an IdentityInit subclass",
    accepts=lambda v: isinstance(part_class(v), type) and issubclass(part_class(v), IdentityInit))


def identity_init_class(part: Any) -> type:
  """The ``IdentityInit`` subclass behind a name or a part."""
  return part_class(IDENTITY_INITS.resolve(part))


def check_identity_init_options(part: Any, options: Any) -> None:
  """One-line `InputError` for an ``identity_init_options`` entry the part does not read."""
  cls = identity_init_class(part)
  check_options("identity_init", part if isinstance(part, str) else cls.__name__,
                option_names(IDENTITY_INITS.resolve(part), common=("dtype", "param_dtype")),
                cls.OPTION_CHECKS, options if options is not None else {})
