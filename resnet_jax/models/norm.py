"""Batch normalisation with explicit statistics semantics.

The papers trained on several GPUs, each normalising its own shard of the batch
(He et al. 2015, §3.4: "BN ... with a mini-batch of 256 on 8 GPUs"). Which
examples share statistics is therefore part of the experiment, so it is a field
here rather than an accident of how the step is parallelised:

* ``axis_name=None, group_size=None``: statistics over every example the module
  sees. Under a plain ``jax.jit`` over a sharded batch this is the whole global
  batch; inside ``jax.shard_map`` it is the device's own shard ("per device").
* ``axis_name="data"``: inside ``jax.shard_map``, moments are averaged over the
  named axis, i.e. synchronised over the whole batch.
* ``group_size=N``: "ghost" batch norm, statistics over groups of N consecutive
  examples.

Parameters are named as in ``flax.linen.BatchNorm`` (``scale``, ``bias``;
``batch_stats``: ``mean``, ``var``) so tools written for Flax keep working.
Statistics are computed and stored in float32 (float64 for a float64 network).

Every norm of the models follows one protocol: ``norm(name=..., dtype=...,
param_dtype=..., [scale_init=...])`` builds a module applied as ``m(x, train=bool)``.
``flax_norm`` adapts the stock Flax norms (GroupNorm, LayerNorm, ...) to it.

A network passes its ``norm_options`` to the norm it builds: the fields of the norm's class
but dtypes and initialisers (``BatchNorm``: ``momentum``, ``epsilon``, ``axis_name``,
``group_size``, ``unbiased_variance``, ``fast_variance``; GroupNorm: ``num_groups``,
``epsilon``, ...). ``check_norm_options`` refuses one the norm does not read.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.errors import InputError

from resnet_jax.models.parts import PartTable, check_options, is_number, option_names

Initializer = Callable[..., jax.Array]


class BatchNorm(nn.Module):
  """Batch normalisation over all axes but the last (channels).

  ``unbiased_variance``: the running variance averages the *unbiased* batch variance
  (× n/(n−1), n the examples × positions that share statistics), as PyTorch, Torch7
  (fb.resnet.torch) and Caffe do; False keeps the biased one (``flax.linen.BatchNorm``).
  Normalisation itself always uses the biased batch variance, as all of them do.

  ``fast_variance``: the batch moments in one pass, E[x²] - E[x]² of x shifted by one of
  its own values per channel (which removes the cancellation of the textbook one-pass
  formula), as ``flax.linen.BatchNorm``'s ``use_fast_variance``; False: the mean, then
  E[(x - mean)²].
  One pass reads each activation once for both moments (and needs one collective for
  both under ``axis_name``): the train step's statistics cost half the memory traffic.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  group_size: Optional[int] = None
  unbiased_variance: bool = False
  fast_variance: bool = True
  scale_init: Initializer = nn.initializers.ones
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
    stat_dtype = jnp.promote_types(jnp.promote_types(self.dtype, self.param_dtype), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), stat_dtype)
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,), stat_dtype)

    xf = x.astype(stat_dtype)
    if not train:
      mean, var = running_mean.value, running_var.value
      y = (xf - mean) * (scale.astype(stat_dtype) * jax.lax.rsqrt(var + self.epsilon))
      return (y + bias.astype(stat_dtype)).astype(self.dtype)

    # Moments of x minus one of its own values per channel (the batch's first position): a
    # shift inside the batch's range keeps E[x²] - E[x]² (one pass) from cancellation, and as a
    # constant it leaves the gradients unchanged. It is taken from x, not from the running mean,
    # so a rematerialised unit recomputes the same arithmetic.
    shift = (jax.lax.stop_gradient(xf.reshape(-1, features)[0]) if self.fast_variance
             else jnp.zeros((), stat_dtype))
    xs = xf - shift
    if self.group_size is not None:
      batch = x.shape[0]
      if self.group_size <= 0 or batch % self.group_size:
        raise InputError(
            f"ghost batch norm group_size={self.group_size} must be a positive divisor of the "
            f"(per-device) batch {batch}")
      grouped = xs.reshape((batch // self.group_size, self.group_size) + x.shape[1:])
      mean, var = _moments(grouped, tuple(range(1, grouped.ndim - 1)), None, self.fast_variance)
      y = _normalize(grouped, mean, var, scale, bias, self.epsilon).reshape(x.shape)
      batch_mean = mean.reshape(-1, features).mean(axis=0) + shift
      batch_var = var.reshape(-1, features).mean(axis=0)
      count = xf.size // (features * (batch // self.group_size))
    else:
      mean, var = _moments(xs, tuple(range(x.ndim - 1)), self.axis_name, self.fast_variance)
      y = _normalize(xs, mean, var, scale, bias, self.epsilon)
      batch_mean, batch_var = mean.reshape(features) + shift, var.reshape(features)
      count = xf.size // features
      if self.axis_name is not None:
        count = count * jax.lax.psum(1, self.axis_name)

    if self.unbiased_variance:
      batch_var = batch_var * (count / jnp.maximum(count - 1, 1))
    if not self.is_initializing():
      running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * batch_mean
      running_var.value = self.momentum * running_var.value + (1 - self.momentum) * batch_var
    return y.astype(self.dtype)


def _moments(x: jax.Array, axes: tuple, axis_name: Optional[str], one_pass: bool) -> tuple:
  """Mean and biased variance of `x` over `axes` (and the named axis), kept as reduced dims.

  `one_pass`: E[x] and E[x²] are reduced together (one read of x, one collective for both)
  and var = E[x²] - E[x]²; otherwise var = E[(x - E[x])²], a second pass after the mean.
  """
  mean = x.mean(axis=axes, keepdims=True)
  if one_pass:
    mean_square = jnp.square(x).mean(axis=axes, keepdims=True)
    if axis_name is not None:
      mean, mean_square = jax.lax.pmean((mean, mean_square), axis_name)
    return mean, jnp.maximum(mean_square - jnp.square(mean), 0.0)
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  var = jnp.square(x - mean).mean(axis=axes, keepdims=True)
  if axis_name is not None:
    var = jax.lax.pmean(var, axis_name)
  return mean, var


def _normalize(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array, bias: jax.Array,
               epsilon: float) -> jax.Array:
  """`(x - mean) / sqrt(var + eps) * scale + bias`, the scale folded into one per-channel factor.

  Multiplying by `scale * rsqrt(var + eps)` (a vector) rather than by `rsqrt(...)` and
  then `scale` (two full-size products, each kept for the backward pass) cut the train
  step's memory traffic by 14 % (ResNet-20 on CPU, XLA's cost analysis): 4.00 -> 3.43 GB per
  step (experiments/README.md, "Speed").
  """
  return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale.astype(x.dtype)) + bias.astype(x.dtype)


@functools.lru_cache(maxsize=None)
def _train_aware(cls: type) -> type:
  """``cls`` with ``__call__(x, train)``; parameters keep the names and place of ``cls``."""
  if issubclass(cls, nn.BatchNorm):
    def __call__(self, x, train: bool = False):
      return cls.__call__(self, x, use_running_average=not train)
  else:
    def __call__(self, x, train: bool = False):  # pylint: disable=unused-argument
      return cls.__call__(self, x)
  __call__.__doc__ = f"{cls.__name__} of ``x``; ``train`` selects batch statistics where it has them."
  return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": __name__,
                                     "__qualname__": f"flax_norm({cls.__name__})"})


def flax_norm(cls: type, **options: Any) -> Callable[..., nn.Module]:
  """A norm constructor from a stock Flax norm class, e.g. ``flax_norm(nn.GroupNorm, num_groups=8)``.

  The result follows the models' norm protocol: ``(name=, dtype=, param_dtype=,
  scale_init=)`` are passed through to ``cls`` (zero-init residual works), and the
  module is applied as ``m(x, train=bool)``; for ``nn.BatchNorm``, ``train`` sets
  ``use_running_average=not train``. Parameters are named as ``cls`` names them.
  """
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise TypeError(f"flax_norm expects a flax.linen norm class such as nn.GroupNorm, got {cls!r}")
  return functools.partial(_train_aware(cls), **options)


class NoNorm(nn.Module):
  """No normalisation: the identity, without parameters (``norm="none"``), for the networks that
  train without it (Fixup, Zhang et al. 2019; SkipInit, De & Smith 2020). A unit whose branch
  would zero its last norm's scale (``zero_init_residual``) zeroes its last convolution instead."""
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scale_init: Initializer = nn.initializers.ones  # no scale: the protocol's argument, unused

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:  # pylint: disable=unused-argument
    return x


# Named norms for configs. GroupNorm: 32 groups, the default of Wu & He 2018 (widths must
# divide by 32; use ``flax_norm(nn.GroupNorm, num_groups=...)`` for narrow CIFAR nets).
# LayerNorm normalises each position over its channels.
NORMS = PartTable("norm", {
    "batch": BatchNorm,
    "group": flax_norm(nn.GroupNorm, num_groups=32),
    "layer": flax_norm(nn.LayerNorm),
    "none": NoNorm,
}, "a norm constructor (see flax_norm)")


def _positive_int_or_none(value: Any) -> bool:
  return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def _flag(value: Any) -> bool:
  return isinstance(value, bool)


# How each norm option's value is checked (by name: BatchNorm's and Flax's norms share names).
NORM_OPTION_CHECKS = {
    "momentum": (lambda v: is_number(v) and 0.0 <= v <= 1.0, "a number in [0.0, 1.0]"),
    "epsilon": (lambda v: is_number(v) and v > 0, "a positive number (it keeps 1/sqrt(var + eps) finite)"),
    "group_size": (_positive_int_or_none, "a positive integer or None"),
    "num_groups": (_positive_int_or_none, "a positive integer or None"),
    "axis_name": (lambda v: v is None or isinstance(v, str), "a mesh axis name or None"),
    "unbiased_variance": (_flag, "True or False"),
    "fast_variance": (_flag, "True or False"),
    "use_fast_variance": (_flag, "True or False"),
    "use_bias": (_flag, "True or False"),
    "use_scale": (_flag, "True or False"),
}


def norm_option_names(norm: Any) -> Optional[tuple]:
  """The options `norm` (a name in ``NORMS`` or a constructor) reads; None if it is no
  dataclass (a plain function: its options are its own business)."""
  # The network sets the dtypes, and the unit the zero-init scale (initialisers are no plain data).
  return option_names(NORMS.resolve(norm), common=("dtype", "param_dtype", "scale_init", "bias_init"))


def check_norm_options(norm: Any, options: Any) -> None:
  """One-line `InputError` for a ``norm_options`` entry `norm` does not read, or a bad value."""
  check_options("norm", norm if isinstance(norm, str) else getattr(norm, "__name__", norm),
                norm_option_names(norm), NORM_OPTION_CHECKS, options if options is not None else {})
