"""resnet_jax: deep residual networks (ResNet, pre-activation ResNet, ResNeXt) in JAX/Flax."""
from resnet_jax import models
from resnet_jax.models import (BasicBlock, BatchNorm, BottleneckBlock, Conv1x1Shortcut, DropoutShortcut,
                               GatedShortcut, NoShortcut, PlainNet, ProjectionShortcut, ResNeXtBlock, ResNet,
                               ResidualUnit, ScaledShortcut, ZeroPadShortcut)
from resnet_jax.study import Study, compare

__version__ = "0.1.0"
