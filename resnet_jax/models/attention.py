"""Channel attention in the residual branch: a part kind like norm or conv (``attention=``).

A residual unit applies the attention module to its branch's output, before stochastic
depth and the shortcut's addition (Hu et al. 2018, Fig. 3: "SE-ResNet module"), as timm
does for its ``seresnet``/``ecaresnet`` networks. Every module is built as
``attention(name=, dtype=, param_dtype=, **attention_options)`` and applied as ``m(x)``,
and rescales the channels of ``x`` by gates in (0, 1) computed from their spatial means:

* ``"se"``: Squeeze-and-Excitation (Hu et al. 2018, §3): squeeze by global average pooling,
  excite with two fully connected layers (reduction ``ratio``, ReLU, sigmoid).
* ``"eca"``: Efficient Channel Attention (Wang et al. 2020, §3.3): a 1-D convolution of
  width ``k`` across neighbouring channels of the pooled vector, ``k`` from the channel count.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.parts import PartTable, check_options, is_number, option_names, part_class


def round_channels(value: float, divisor: int) -> int:
  """`value` rounded to the nearest multiple of `divisor`, at least `divisor` (timm's
  ``make_divisible`` as its SE calls it, never rounding up for a 10 % loss)."""
  return max(divisor, int(value + divisor / 2) // divisor * divisor)


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
  """Wang et al. 2020, Eq. 12: k = |log2(C)/γ + b/γ| rounded to an odd number, here as
  timm computes it (the integer part of (log2 C + b)/γ, made odd upwards, at least 3)."""
  t = int(abs(math.log(channels, 2) + beta) / gamma)
  return max(t if t % 2 else t + 1, 3)


class ChannelAttention(nn.Module):
  """Gates in (0, 1) per channel, computed from the channels' spatial means z, rescale x.

  Subclasses say how (``gates``: (batch, channels) -> (batch, channels)).
  """
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def gates(self, z: jax.Array) -> jax.Array:
    raise NotImplementedError

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    z = jnp.mean(x, axis=(1, 2))  # squeeze: global average pooling
    return x * self.gates(z)[:, None, None, :].astype(x.dtype)


class SqueezeExcitation(ChannelAttention):
  """Squeeze-and-Excitation (Hu et al. 2018, Eq. 2-4): x · σ(W2 δ(W1 z)), z the channel means.

  ``ratio``: 1/r of the paper (r = 16, its choice for every network, Table 10); the hidden
  width C·ratio is rounded to a multiple of ``divisor`` (timm: 8; 1 keeps C/r itself). The
  two layers have biases, as in the paper's Caffe models and timm.
  """
  OPTION_CHECKS: ClassVar = {
      "ratio": (lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1], e.g. 1/16 (the paper's r = 16)"),
      "divisor": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a positive integer"),
  }

  ratio: float = 1.0 / 16
  divisor: int = 8

  def gates(self, z: jax.Array) -> jax.Array:
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    channels = z.shape[-1]
    s = nn.relu(dense(round_channels(channels * self.ratio, self.divisor), "reduce")(z))
    return nn.sigmoid(dense(channels, "expand")(s))


class EfficientChannelAttention(ChannelAttention):
  """ECA (Wang et al. 2020, Eq. 9-12): x · σ(conv1d_k(z)), z the channel means, no bias.

  ``kernel_size``: None takes it from the channels (``eca_kernel_size`` with ``gamma``,
  ``beta`` = 2, 1: the paper's); zero padding at both ends of the channel axis.
  """
  OPTION_CHECKS: ClassVar = {
      "kernel_size": (lambda v: v is None or (isinstance(v, int) and v >= 1 and v % 2 == 1),
                      "an odd positive integer or None (from the channels)"),
      "gamma": (lambda v: is_number(v) and v > 0, "a positive number"),
      "beta": (is_number, "a number"),
  }

  kernel_size: Optional[int] = None
  gamma: float = 2.0
  beta: float = 1.0

  def gates(self, z: jax.Array) -> jax.Array:
    k = self.kernel_size or eca_kernel_size(z.shape[-1], self.gamma, self.beta)
    pad = (k - 1) // 2
    # The channels as a length-C sequence of one feature, convolved across neighbours.
    s = nn.Conv(1, (k,), padding=((pad, pad),), use_bias=False, dtype=self.dtype,
                param_dtype=self.param_dtype, name="conv")(z[:, :, None])
    return nn.sigmoid(s[:, :, 0])


ATTENTIONS = PartTable("attention", {
    "se": SqueezeExcitation,
    "eca": EfficientChannelAttention,
}, "a module constructor attention(name=, dtype=, param_dtype=) applied as m(x)")


def check_attention_options(attention: Any, options: Any) -> None:
  """One-line `InputError` for an ``attention_options`` entry the attention does not read."""
  part = ATTENTIONS.resolve(attention)
  checks = getattr(part_class(part), "OPTION_CHECKS", {})
  check_options("attention", attention if isinstance(attention, str) else part,
                option_names(part, common=("dtype", "param_dtype")), checks,
                options if options is not None else {})
