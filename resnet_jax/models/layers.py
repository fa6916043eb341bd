"""The convolution and activation every stem, block and network uses unless told otherwise.

He et al. 2015 (§3.4) initialise convolutions as in He et al. 2015b ("Delving Deep
into Rectifiers", Eq. 10) and drop their biases, which BatchNorm makes redundant.
BiT (Kolesnikov et al. 2020, §3.1) standardises every convolution's weights (Qiao et al.
2019), which lets GroupNorm replace BatchNorm: ``conv="weight_standardized"``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.parts import PartTable

Activation = Callable[[jax.Array], jax.Array]

# He et al. 2015 initialisation, fan-out as in the authors' Torch code and torchvision.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# The classifier: U(±1/√fan_in) weights and zero bias, as fb.resnet.torch (Torch7's nn.Linear
# default, bias zeroed) and torchvision (nn.Linear's default weights) initialise it; Flax's
# Dense default (LeCun normal) would draw a different scale.
head_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# The papers' convolution: no bias, He-normal (fan-out) kernel. A ``flax.linen.Conv`` constructor.
he_conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_kernel_init)



def standardize_weights(kernel: jax.Array, epsilon: float) -> jax.Array:
  """Each output filter of an HWIO kernel shifted to mean 0 and scaled to variance 1 (Qiao et
  al. 2019, Eq. 5; the biased variance, as timm's StdConv2d and big_vision's BiT)."""
  axes = tuple(range(kernel.ndim - 1))
  mean = jnp.mean(kernel, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(kernel - mean), axis=axes, keepdims=True)
  return (kernel - mean) * jax.lax.rsqrt(var + epsilon)


class WeightStandardizedConv(nn.Conv):
  """A ``flax.linen.Conv`` that convolves with its standardised kernel (``standardize_weights``).

  The stored parameter is the raw kernel, as in timm's ``StdConv2d`` (so checkpoints convert
  as they are). ``epsilon`` 1e-8 is timm's for its BiT ports; big_vision's BiT uses 1e-10
  (both far below a filter's variance).
  """
  epsilon: float = 1e-8

  def param(self, name: str, init_fn: Callable[..., Any], *init_args: Any, **init_kwargs: Any) -> Any:
    value = super().param(name, init_fn, *init_args, **init_kwargs)
    return standardize_weights(value, self.epsilon) if name == "kernel" else value


CONVS = PartTable("conv", {
    "conv": he_conv,
    "weight_standardized": functools.partial(WeightStandardizedConv, use_bias=False,
                                             kernel_init=conv_kernel_init),
}, "a flax.linen.Conv-like constructor")

ACTIVATIONS = PartTable("act", {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "swish": nn.swish,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
}, "a callable")

