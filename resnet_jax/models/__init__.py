"""Residual networks as pure Flax Linen modules.

>>> from resnet_jax import models
>>> model = models.create("cifar_resnet110", shortcut="gate")
>>> models.names()[:3]
['cifar_plain20', 'cifar_plain32', 'cifar_plain44']
"""
from resnet_jax.models.analysis import abstract_variables, count_params, flops, stage_costs, summary, xla_flops
from resnet_jax.models.blocks import (BasicBlock, BottleneckBlock, ConvSpec, PREACT_ORDERS, ResidualUnit,
                                      ResNeXtBlock, STRIDE_PLACEMENTS, UNIT_ORDERS)
from resnet_jax.models.norm import BatchNorm
from resnet_jax.models.registry import config, create, field_names, names, register
from resnet_jax.models.resnet import BLOCKS, PlainNet, ResNet, STEMS
from resnet_jax.models.shortcuts import (SHORTCUTS, Conv1x1Shortcut, DropoutShortcut, GatedShortcut,
                                         NoShortcut, ProjectionShortcut, ScaledShortcut, ZeroPadShortcut,
                                         make_shortcut, zero_pad_identity)

__all__ = [
    "BLOCKS", "BasicBlock", "BatchNorm", "BottleneckBlock", "Conv1x1Shortcut", "ConvSpec", "DropoutShortcut",
    "GatedShortcut", "NoShortcut", "PREACT_ORDERS", "PlainNet", "ProjectionShortcut", "ResNeXtBlock", "ResNet",
    "ResidualUnit", "SHORTCUTS", "STEMS", "STRIDE_PLACEMENTS", "ScaledShortcut", "UNIT_ORDERS", "ZeroPadShortcut",
    "abstract_variables", "config", "count_params", "create", "field_names", "flops", "make_shortcut", "names",
    "register", "stage_costs", "summary", "xla_flops", "zero_pad_identity",
]
