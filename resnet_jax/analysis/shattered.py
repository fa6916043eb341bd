"""Shattered gradients (Balduzzi et al. 2017, "The Shattered Gradients Problem").

Balduzzi et al. show that the gradient of a deep plain (feedforward ReLU) network with respect
to its input looks like white noise: the gradients at nearby inputs decorrelate exponentially
with depth, while in a residual network their correlation decays sublinearly, so the gradient
stays informative about the neighbourhood of an input.

`gradient_correlations` measures this for any network along straight lines between real images:
the inputs x_t = a + t/(T-1)·(b − a), t = 0..T-1, for pairs (a, b) of images. For each residual
unit l, f_l(x) = ⟨r_l, x_{l+1}(x)⟩ / √n is a fixed random projection of the unit's output
(r_l ~ N(0, I), n its size per image), and the correlation (Pearson, over the input's pixels) of
∇_x f_l at inputs k steps apart along a line, averaged over the lines and their positions, is the
autocorrelation at lag k; lag 1 (neighbouring inputs) over depth is the paper's comparison.

Each input's gradient must be its own: BatchNorm uses fixed statistics. At initialisation they
are the statistics of a batch of real images (one training-mode pass over `images`, as training
would normalise them), then held fixed; a trained checkpoint uses its running statistics.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.analysis import probe
from resnet_jax.analysis.probe import Mode, Variables
from resnet_jax.errors import InputError
from resnet_jax.models.norm import NORMS, BatchNorm
from resnet_jax.models.parts import part_class


@dataclasses.dataclass(frozen=True)
class ShatteredGradients:
  """Per residual unit l (first to last) and lag k = 1..T-1.

  Attributes:
    units: the units' paths.
    correlation: [units, lags]: the mean correlation of ∇_x f_l at inputs k steps apart.
    step: the mean distance between neighbouring inputs, relative to the images' norm.
    lines, points: the number of lines and of inputs T on each.
    mode: how BatchNorm normalised.
  """
  units: List[str]
  correlation: np.ndarray
  step: float
  lines: int
  points: int
  mode: str

  @property
  def neighbours(self) -> np.ndarray:
    """The correlation of the gradients at neighbouring inputs (lag 1), per unit."""
    return self.correlation[:, 0]

  def to_dict(self) -> Dict[str, Any]:
    return {"units": list(self.units), "neighbour_correlation": probe.json_numbers(self.neighbours),
            "correlation_by_lag": probe.json_numbers(self.correlation), "relative_step": self.step,
            "lines": self.lines, "points_per_line": self.points, "mode": self.mode}


def lines_between(images: jax.Array, points: int) -> Tuple[jax.Array, float]:
  """`points` inputs on the line from image 2i to image 2i+1, for each pair: [pairs·points, H, W, C],
  and the mean distance between neighbours relative to the images' mean norm."""
  pairs = images.shape[0] // 2
  if pairs < 1 or points < 2:
    raise InputError(f"gradient correlations need at least 2 images and 2 points per line (got "
                     f"{images.shape[0]} images, {points} points)")
  a, b = images[0:2 * pairs:2], images[1:2 * pairs:2]
  t = jnp.linspace(0.0, 1.0, points).reshape(1, points, 1, 1, 1)
  inputs = (a[:, None] + t * (b - a)[:, None]).reshape((pairs * points,) + images.shape[1:])
  norm = lambda x: jnp.sqrt(jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=1))
  step = float(jnp.mean(norm(b - a)) / (points - 1) / jnp.mean(norm(images)))
  return inputs, step


def with_batch_statistics(model: nn.Module, variables: Variables, images: jax.Array) -> Variables:
  """`variables` whose BatchNorm statistics are those of `images` (one training-mode pass of the
  network with momentum 0: the batch's mean and biased variance, over the whole batch)."""
  norm = part_class(NORMS.resolve(model.norm))
  if "batch_stats" not in variables or norm is None or not issubclass(norm, BatchNorm):
    return variables
  return {**variables, "batch_stats": _statistics_program(model)(variables, images)}


@probe.program_cache()
def _statistics_program(model: nn.Module):
  options = {**dict(model.norm_options or {}), "momentum": 0.0, "unbiased_variance": False, "group_size": None}
  once = model.clone(norm_options=options)
  return jax.jit(lambda v, x: once.apply(v, x, train=True, mutable=["batch_stats"],
                                         rngs={"dropout": jax.random.key(0)})[1]["batch_stats"])


def _unit_outputs(model: nn.Module, variables: Variables, inputs: jax.Array) -> Dict[str, jax.Array]:
  """Every unit's output for `inputs`, in evaluation mode (the statistics held fixed)."""
  outputs: Dict[str, jax.Array] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if probe.is_unit_call(context):
      outputs[probe.unit_key(context.module)] = out
    return out

  with nn.intercept_methods(record):
    probe.apply(model, variables, inputs, Mode(train=False))
  return outputs


def _correlations(grads: jax.Array, points: int) -> jax.Array:
  """[lags]: the mean Pearson correlation of gradients k = 1..T-1 steps apart on a line."""
  g = grads.reshape(-1, points, int(np.prod(grads.shape[1:])))
  g = g - g.mean(axis=-1, keepdims=True)
  g = g / jnp.maximum(jnp.linalg.norm(g, axis=-1, keepdims=True), 1e-30)
  return jnp.stack([jnp.mean(jnp.sum(g[:, k:] * g[:, :-k], axis=-1)) for k in range(1, points)])


@probe.program_cache()
def _program(model: nn.Module, variables_key: Any, inputs: jax.ShapeDtypeStruct, points: int):
  """(units in the network's order, their output shapes, the jitted lag correlations of the input
  gradients of Σ_examples ⟨r, x_{l+1}⟩ for cotangents r non-zero at one unit): one compile per network."""
  variables = jax.tree.unflatten(*variables_key)
  shapes = jax.eval_shape(lambda v, x: _unit_outputs(model, v, x), variables, inputs)
  units, _, _ = probe.unit_shapes(model, variables, inputs, Mode(train=False))

  @jax.jit
  def correlation_of(variables, inputs, unit_projections):
    _, pullback = jax.vjp(lambda x: _unit_outputs(model, variables, x), inputs)
    (grads,) = pullback({u: jnp.broadcast_to(r, shapes[u].shape).astype(shapes[u].dtype)
                         for u, r in unit_projections.items()})
    return _correlations(grads, points)
  return units, shapes, correlation_of


def gradient_correlations(model: nn.Module, variables: Variables, images: jax.Array, mode: Mode,
                          points: int = 32, seed: int = 0) -> ShatteredGradients:
  """The shattered-gradients analysis of `model` on lines between pairs of `images` (module docstring)."""
  model = probe.without_stochastic_depth(model)
  if mode.train:
    variables = with_batch_statistics(model, variables, images)
  inputs, step = lines_between(images, points)
  units, shapes, correlation_of = _program(model, probe.shape_key(variables),
                                           jax.ShapeDtypeStruct(inputs.shape, inputs.dtype), points)
  keys = jax.random.split(jax.random.key(seed), len(units))
  projections = {u: jax.random.normal(k, shapes[u].shape[1:], shapes[u].dtype) / np.sqrt(np.prod(shapes[u].shape[1:]))
                 for u, k in zip(units, keys)}
  zeros = {u: jnp.zeros_like(r) for u, r in projections.items()}
  rows = [np.asarray(correlation_of(variables, inputs, {**zeros, u: projections[u]})) for u in units]
  return ShatteredGradients(units, np.stack(rows).astype(np.float64), step, images.shape[0] // 2, points,
                            _describe(mode))


def _describe(mode: Mode) -> str:
  if mode.train:
    return ("BatchNorm with the statistics of the analysis batch of real images (training mode), "
            "held fixed while differentiating")
  return Mode(train=False).describe()
