"""The convolution and activation every stem, block and network uses unless told otherwise.

He et al. 2015 (§3.4) initialise convolutions as in He et al. 2015b ("Delving Deep
into Rectifiers", Eq. 10) and drop their biases, which BatchNorm makes redundant.
"""
from __future__ import annotations

import functools
from typing import Callable, Union

import flax.linen as nn
import jax

Activation = Callable[[jax.Array], jax.Array]

# He et al. 2015 initialisation, fan-out as in the authors' Torch code and torchvision.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# The classifier: U(±1/√fan_in) weights and zero bias, as fb.resnet.torch (Torch7's nn.Linear
# default, bias zeroed) and torchvision (nn.Linear's default weights) initialise it; Flax's
# Dense default (LeCun normal) would draw a different scale.
head_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# The papers' convolution: no bias, He-normal (fan-out) kernel. A ``flax.linen.Conv`` constructor.
he_conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_kernel_init)

CONVS = {"conv": he_conv}

ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "swish": nn.swish,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
}


def activation(act: Union[str, Activation]) -> Activation:
  """The activation named in ``ACTIVATIONS``, or ``act`` itself if it is a callable."""
  if callable(act):
    return act
  if act not in ACTIVATIONS:
    raise ValueError(f"unknown act {act!r}: valid choices are {', '.join(ACTIVATIONS)} or a callable")
  return ACTIVATIONS[act]
