"""Residual networks as pure Flax Linen modules.

Examples:
    >>> from resnet_jax import models
    >>> model = models.create("cifar_resnet110", shortcut="gate")
    >>> models.names()[:3]
    ['cifar_plain20', 'cifar_plain32', 'cifar_plain44']
    >>> import flax.linen as nn
    >>> headless = models.create("resnet50", norm=models.flax_norm(nn.GroupNorm, num_groups=32), num_classes=0)
"""
from resnet_jax.models.anti_alias import ANTI_ALIASING, avg_pool, blur_pool
from resnet_jax.models.attention import ATTENTIONS, EfficientChannelAttention, SqueezeExcitation
from resnet_jax.models.analysis import (abstract_variables, count_params, flops, size, stage_costs, summary,
                                       xla_flops)
from resnet_jax.models.blocks import (BasicBlock, BottleneckBlock, ConvSpec, PREACT_ORDERS, ResidualUnit,
                                      ResNeXtBlock, STRIDE_PLACEMENTS, UNIT_ORDERS)
from resnet_jax.models.drop_path import DROP_PATH_RULES, drop_path, drop_rates
from resnet_jax.models.identity_init import (IDENTITY_INITS, Fixup, IdentityInit, ReZero, ResidualWeight, ScalarBias,
                                            SkipInit)
from resnet_jax.models.layers import ACTIVATIONS, CONVS, WeightStandardizedConv, conv_kernel_init, he_conv
from resnet_jax.models.norm import NORMS, BatchNorm, NoNorm, check_norm_options, flax_norm, norm_option_names
from resnet_jax.models.parts import PartTable, part_class
from resnet_jax.models.registry import config, create, field_names, names, register
from resnet_jax.models.resnet import BLOCKS, REMAT_POLICIES, PlainNet, ResNet, STEMS, StagePlan
from resnet_jax.models.stems import BiTStem, CifarStem, DeepStem, DeepStridedStem, ImageNetStem, PreActStem
from resnet_jax.models.shortcuts import (SHORTCUTS, Conv1x1Shortcut, DropoutShortcut, GatedShortcut,
                                         NoShortcut, ProjectionShortcut, ScaledShortcut, Shortcut,
                                         ZeroPadShortcut, make_shortcut, shortcut_factory, zero_pad_identity)

__all__ = [
    "ACTIVATIONS", "ANTI_ALIASING", "ATTENTIONS", "BLOCKS", "BasicBlock", "BatchNorm", "BiTStem", "BottleneckBlock",
    "CONVS", "CifarStem", "Conv1x1Shortcut", "ConvSpec", "DROP_PATH_RULES", "DeepStem", "DeepStridedStem",
    "DropoutShortcut", "EfficientChannelAttention", "Fixup", "GatedShortcut", "IDENTITY_INITS", "IdentityInit",
    "ImageNetStem", "NORMS", "NoNorm", "NoShortcut", "ReZero", "ResidualWeight", "ScalarBias", "SkipInit",
    "PREACT_ORDERS", "PartTable", "PlainNet", "PreActStem", "ProjectionShortcut", "REMAT_POLICIES", "ResNeXtBlock",
    "ResNet", "ResidualUnit", "SHORTCUTS", "STEMS", "STRIDE_PLACEMENTS", "ScaledShortcut", "Shortcut",
    "SqueezeExcitation", "StagePlan", "UNIT_ORDERS", "WeightStandardizedConv", "ZeroPadShortcut",
    "abstract_variables", "avg_pool", "blur_pool", "check_norm_options", "config", "conv_kernel_init",
    "count_params", "create", "drop_path", "drop_rates", "field_names", "flax_norm", "flops", "he_conv",
    "make_shortcut", "names", "norm_option_names", "part_class", "register", "shortcut_factory", "size", "stage_costs",
    "summary", "xla_flops", "zero_pad_identity",
]
