"""The convolution and activation every stem, block and network uses unless told otherwise.

He et al. 2015 (§3.4) initialise convolutions as in He et al. 2015b ("Delving Deep
into Rectifiers", Eq. 10) and drop their biases, which BatchNorm makes redundant.
"""
from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax

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

CONVS = PartTable("conv", {"conv": he_conv}, "a flax.linen.Conv-like constructor")

ACTIVATIONS = PartTable("act", {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "swish": nn.swish,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
}, "a callable")

