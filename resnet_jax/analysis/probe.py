"""Looking inside a network without changing it: its residual units, found by Flax method interception.

Every analysis here reaches the units through `flax.linen.intercept_methods`, so any network of
`resnet_jax.models` (any unit order, shortcut or identity-at-initialisation part) is analysed as
it is. A *unit* is a `ResidualUnit` call; its *shortcut* is the module it calls as `shortcut(x,
F(x), train=, preactivated=)`, which merges the input with the branch (plain nets included:
their shortcut returns F(x) alone).

How BatchNorm normalises is part of each result (`Mode`): at initialisation its running
statistics are not yet statistics of anything, so the analyses use the batch's (training mode,
the updates thrown away); a trained checkpoint is analysed in evaluation mode.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models.blocks import ResidualUnit

Variables = Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Mode:
  """How the network normalises during an analysis: `train` True uses batch statistics."""
  train: bool

  @classmethod
  def for_weights(cls, initialised: bool) -> "Mode":
    """Batch statistics at initialisation, the running ones for trained weights."""
    return cls(train=initialised)

  def describe(self) -> str:
    return ("training-mode BatchNorm (the batch's statistics; updates discarded)" if self.train
            else "evaluation-mode BatchNorm (the running statistics)")


def is_unit_call(context: Any) -> bool:
  return context.method_name == "__call__" and isinstance(context.module, ResidualUnit)


def is_shortcut_call(context: Any) -> bool:
  """The call in which a unit merges its input and branch (the module it names "shortcut")."""
  module = context.module
  return (context.method_name == "__call__" and module.name == "shortcut"
          and isinstance(module.parent, ResidualUnit))


def unit_key(module: nn.Module) -> str:
  """A unit's path in the network, e.g. "stage2_unit3"."""
  return "/".join(module.path) or module.name


def apply(model: nn.Module, variables: Variables, images: jax.Array, mode: Mode, **kwargs) -> Any:
  """`model.apply` in `mode` (training mode: batch statistics, their updates thrown away), without
  stochastic depth (the whole network is analysed) and with a fixed key for any dropout."""
  if mode.train:
    out, _ = model.apply(variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)},
                         **kwargs)
    return out
  return model.apply(variables, images, train=False, **kwargs)


def without_stochastic_depth(model: nn.Module) -> nn.Module:
  """The same network with every branch kept in training mode (`drop_path_rate` 0)."""
  return model.clone(drop_path_rate=0.0) if getattr(model, "drop_path_rate", 0.0) else model


def unit_shapes(model: nn.Module, variables: Variables, images: jax.Array, mode: Mode
                ) -> Tuple[List[str], Dict[str, jax.ShapeDtypeStruct], Dict[str, jax.ShapeDtypeStruct]]:
  """(units in the order the network calls them, each unit's input shape, each shortcut's input
  shape), traced abstractly."""
  order: List[str] = []
  unit_inputs: Dict[str, Any] = {}
  shortcut_inputs: Dict[str, Any] = {}

  def record(next_fun, args, kwargs, context):
    if is_unit_call(context):
      key = unit_key(context.module)
      order.append(key)
      unit_inputs[key] = jax.ShapeDtypeStruct(args[0].shape, args[0].dtype)
    elif is_shortcut_call(context):
      shortcut_inputs[unit_key(context.module.parent)] = jax.ShapeDtypeStruct(args[0].shape, args[0].dtype)
    return next_fun(*args, **kwargs)

  def run(variables, images):
    with nn.intercept_methods(record):
      return apply(model, variables, images, mode)
  jax.eval_shape(run, variables, images)
  return order, unit_inputs, shortcut_inputs


def program_cache(maxsize: int = 16) -> Callable[[Callable], Callable]:
  """`functools.lru_cache` for functions that build a compiled program of a network: a Flax module
  argument is keyed by its `repr` (its class and every field), since modules whose fields hold
  dicts (`norm_options`, ...) cannot be hashed; equal networks share one program."""
  def decorate(build: Callable) -> Callable:
    cache: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()

    @functools.wraps(build)
    def cached(*args):
      key = tuple((type(a), repr(a)) if isinstance(a, nn.Module) else a for a in args)
      if key in cache:
        cache.move_to_end(key)
        return cache[key]
      value = cache[key] = build(*args)
      if len(cache) > maxsize:
        cache.popitem(last=False)
      return value
    cached.cache_clear = cache.clear
    return cached
  return decorate


def shape_key(tree: Any) -> Tuple[Any, Tuple[jax.ShapeDtypeStruct, ...]]:
  """A hashable description of a pytree's structure, shapes and dtypes (a compiled program's key)."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in leaves)


def perturbed(unit_deltas: Optional[Dict[str, jax.Array]], shortcut_deltas: Optional[Dict[str, jax.Array]]
              ) -> Callable:
  """An interceptor adding `unit_deltas[unit]` to each unit's input and `shortcut_deltas[unit]` to
  the input its shortcut receives. Zero deltas change nothing; their gradients are the gradients
  with respect to those inputs."""
  def interceptor(next_fun, args, kwargs, context):
    if unit_deltas and is_unit_call(context) and unit_key(context.module) in unit_deltas:
      args = (args[0] + unit_deltas[unit_key(context.module)],) + tuple(args[1:])
    elif shortcut_deltas and is_shortcut_call(context) and unit_key(context.module.parent) in shortcut_deltas:
      delta = shortcut_deltas[unit_key(context.module.parent)]
      if kwargs.get("preactivated") is args[0]:  # a post-activation unit's projection reads x as `preactivated`
        kwargs = {**kwargs, "preactivated": args[0] + delta}
      args = (args[0] + delta,) + tuple(args[1:])
    return next_fun(*args, **kwargs)
  return interceptor


def json_numbers(values: Any) -> Any:
  """An array or number as JSON data: floats, NaN as None (JSON has no NaN)."""
  values = np.asarray(values, np.float64)
  if values.ndim == 0:
    return None if np.isnan(values) else float(values)
  return [json_numbers(v) for v in values]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The mean softmax cross-entropy of the batch: the training loss L."""
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1))
