"""The gradient highway (He et al. 2016, "Identity Mappings", §3, Eq. 5).

With identity shortcuts, x_L = x_l + Σ_{i=l}^{L-1} F(x_i) (Eq. 4), so

    ∂L/∂x_l = ∂L/∂x_L · (1 + ∂/∂x_l Σ F(x_i))                             (Eq. 5)

the gradient of a deep unit reaches every shallower one directly, through the shortcuts, and
it is unlikely to vanish: ‖∂L/∂x_l‖ stays of the order of ‖∂L/∂x_L‖ at every depth. In a plain
net every path runs through the weight layers, and the gradient shrinks or grows with depth.

`gradient_highway` measures it for any network, unit by unit: ‖∂L/∂x_l‖ (x_l the input of unit
l, L the mean cross-entropy of a batch) relative to the last unit's, and how much of it arrives
through the unit's shortcut rather than its branch: g = g_shortcut + g_branch, where g_shortcut
is the gradient with respect to the input the shortcut receives (zero perturbations added to
each unit's input and to its shortcut's, by method interception: the network is not changed).
A pre-activation unit whose projection reads the pre-activated input counts that projection
with the branch (the pre-activation is shared).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.analysis import probe
from resnet_jax.errors import InputError
from resnet_jax.analysis.probe import Mode, Variables

Arrays = Dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class GradientHighway:
  """Per residual unit l, first to last (all arrays have one entry per unit).

  Attributes:
    units: the units' paths ("stage1_unit1", ...).
    norm: ‖∂L/∂x_l‖, the root mean square over the batch of each example's gradient norm.
    shortcut_norm, branch_norm: the same of the parts that arrive through the shortcut and the branch.
    shortcut_share: ⟨g_shortcut, g⟩ / ‖g‖², the fraction of ∂L/∂x_l carried by the shortcut
      (1 − it by the branch; either can leave [0, 1] when the two point apart).
    mode: how BatchNorm normalised (`probe.Mode.describe`).
  """
  units: List[str]
  norm: np.ndarray
  shortcut_norm: np.ndarray
  branch_norm: np.ndarray
  shortcut_share: np.ndarray
  mode: str

  @property
  def relative_norm(self) -> np.ndarray:
    """‖∂L/∂x_l‖ / ‖∂L/∂x_L‖, L the last unit (NaN where no gradient reaches the last unit)."""
    with np.errstate(divide="ignore", invalid="ignore"):
      return self.norm / self.norm[-1] if self.norm[-1] > 0 else np.full_like(self.norm, np.nan)

  @property
  def spread(self) -> float:
    """max / min of ‖∂L/∂x_l‖ over the units: 1 where every unit gets the same gradient (NaN
    where some unit gets none)."""
    return float(self.norm.max() / self.norm.min()) if self.norm.min() > 0 else float("nan")

  def to_dict(self) -> Dict[str, Any]:
    """JSON data (NaN as None)."""
    j = probe.json_numbers
    return {"units": list(self.units), "norm": j(self.norm), "relative_norm": j(self.relative_norm),
            "shortcut_norm": j(self.shortcut_norm), "branch_norm": j(self.branch_norm),
            "shortcut_share": j(self.shortcut_share), "spread_max_over_min": j(self.spread), "mode": self.mode}


def _rms_norm(g: jax.Array) -> jax.Array:
  """Root mean square over the batch (axis 0) of each example's gradient norm."""
  return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1)))


def highway_fn(model: nn.Module, mode: Mode, units: List[str], unit_inputs: Dict[str, Any],
               shortcut_inputs: Dict[str, Any]) -> Callable[[Variables, jax.Array, jax.Array], Arrays]:
  """`f(variables, images, labels)` -> per-unit arrays of `GradientHighway` (jittable; one backward
  pass). `units`, `unit_inputs`, `shortcut_inputs`: from `probe.unit_shapes` of the same batch shape."""
  zeros = lambda shapes: {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}

  def fn(variables: Variables, images: jax.Array, labels: jax.Array) -> Arrays:
    def loss(unit_deltas, shortcut_deltas):
      with nn.intercept_methods(probe.perturbed(unit_deltas, shortcut_deltas)):
        return probe.cross_entropy(probe.apply(model, variables, images, mode), labels)
    g_units, g_shortcuts = jax.grad(loss, argnums=(0, 1))(zeros(unit_inputs), zeros(shortcut_inputs))
    total, through = [g_units[u] for u in units], [g_shortcuts[u] for u in units]
    # No gradient at all (Fixup's classifier starts at 0): no share either.
    share = [jnp.where(jnp.vdot(g, g) > 0, jnp.vdot(s, g) / jnp.vdot(g, g), jnp.nan) for s, g in zip(through, total)]
    return {"norm": jnp.stack([_rms_norm(g) for g in total]),
            "shortcut_norm": jnp.stack([_rms_norm(s) for s in through]),
            "branch_norm": jnp.stack([_rms_norm(g - s) for s, g in zip(through, total)]),
            "shortcut_share": jnp.stack(share)}
  return fn


@probe.program_cache()
def _program(model: nn.Module, mode: Mode, variables_shape: Any, images_shape: jax.ShapeDtypeStruct):
  """(units, the jitted `highway_fn`) of a network and input shape: compiled once for all its weights."""
  variables = jax.tree.unflatten(variables_shape[0], variables_shape[1])
  units, unit_inputs, shortcut_inputs = probe.unit_shapes(model, variables, images_shape, mode)
  return units, jax.jit(highway_fn(model, mode, units, unit_inputs, shortcut_inputs))


def gradient_highway(model: nn.Module, variables: Variables, images: jax.Array, labels: jax.Array,
                     mode: Mode) -> GradientHighway:
  """The gradient highway of `model` on one batch (module docstring)."""
  model = probe.without_stochastic_depth(model)
  units, fn = _program(model, mode, probe.shape_key(variables), jax.ShapeDtypeStruct(images.shape, images.dtype))
  if not units:
    raise InputError(f"{type(model).__name__} has no residual units to analyse")
  out = fn(variables, images, labels)
  out = {k: np.asarray(v, np.float64) for k, v in out.items()}
  return GradientHighway(units, out["norm"], out["shortcut_norm"], out["branch_norm"], out["shortcut_share"],
                         mode.describe())
