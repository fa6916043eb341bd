"""Anti-aliased downsampling (Zhang 2019, "Making Convolutional Networks Shift-Invariant Again").

A strided layer samples its input without low-pass filtering it first, which aliases.
Zhang's fix splits each strided layer into its stride-1 version and a blur that then
subsamples ("BlurPool"): ``MaxPool(stride 2)`` becomes ``MaxPool(stride 1)`` + BlurPool,
and ``Conv(stride 2)``-norm-ReLU becomes ``Conv(stride 1)``-norm-ReLU + BlurPool (Fig. 2).
Networks choose it with ``anti_alias=``, as timm's ``aa_layer``:

* ``"blur"``: the binomial filter [1, 2, 1]ᵀ[1, 2, 1]/16 (Zhang's "Tri-3", timm's
  ``BlurPool2d``), reflection-padded by one, as timm's ``resnetblur50``.
* ``"avg"``: a 2×2 average (the box filter [1, 1]) with stride 2, timm's ``resnetaa50``,
  which also replaces the stem's max-pool by it outright (``replaces_max_pool``).

Each is a function ``aa(x, strides)`` of an NHWC array; neither has parameters.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models.parts import PartTable


def blur_pool(x: jax.Array, strides: int) -> jax.Array:
  """Zhang 2019's BlurPool: each channel convolved with the 3×3 binomial filter (reflection
  padding), then subsampled by `strides`."""
  taps = np.array([1.0, 2.0, 1.0]) / 4.0
  channels = x.shape[-1]
  kernel = np.broadcast_to(np.outer(taps, taps)[:, :, None, None], (3, 3, 1, channels))
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  return jax.lax.conv_general_dilated(x, jnp.asarray(kernel, x.dtype), (strides, strides), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=channels)


def avg_pool(x: jax.Array, strides: int) -> jax.Array:
  """A `strides`×`strides` average with that stride (timm's ``nn.AvgPool2d(stride)``)."""
  return nn.avg_pool(x, (strides, strides), (strides, strides))


blur_pool.replaces_max_pool = False  # type: ignore[attr-defined]
avg_pool.replaces_max_pool = True  # type: ignore[attr-defined]

ANTI_ALIASING: PartTable = PartTable("anti_alias", {"blur": blur_pool, "avg": avg_pool},
                                     "a function aa(x, strides)")


def stem_pool(x: jax.Array, anti_alias: Callable[..., jax.Array] | None) -> jax.Array:
  """The stems' 3×3/2 max-pool, anti-aliased as `anti_alias` says (None: the plain one)."""
  if anti_alias is None:
    return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
  if getattr(anti_alias, "replaces_max_pool", False):
    return anti_alias(x, 2)
  return anti_alias(nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1))), 2)
