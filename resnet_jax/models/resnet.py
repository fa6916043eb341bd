"""The residual network: stem, stages of residual units, head, driven by a stage table.

One module covers every network of the three papers: ImageNet ResNets (He et al.
2015, Table 1), CIFAR 6n+2 ResNets and plain nets (§4.2), pre-activation ResNets
(He et al. 2016) and ResNeXt (Xie et al. 2017). Named configurations live in
``registry.py``; every field here can be overridden to build a variant.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import blocks as blocks_lib
from resnet_jax.models import shortcuts as shortcuts_lib
from resnet_jax.models.norm import BatchNorm

BLOCKS = {"basic": blocks_lib.BasicBlock, "bottleneck": blocks_lib.BottleneckBlock}
STEMS = ("imagenet", "cifar")

# He et al. 2015 initialisation, fan-out as in the authors' Torch code and torchvision.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _check_choice(field: str, value: Any, choices: Sequence[Any]) -> None:
  if value not in choices:
    raise ValueError(f"unknown {field} {value!r}: valid choices are {', '.join(map(str, choices))}")


class ResNet(nn.Module):
  """A residual (or plain) network.

  Attributes:
    stage_sizes: residual units per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    stage_widths: per-stage base widths: output channels of a basic unit, or the
      1×1-3×3 width of a bottleneck (whose output is ``expansion`` times wider).
    block: ``"basic"`` or ``"bottleneck"``.
    num_classes: classifier outputs.
    stem: ``"imagenet"`` (7×7/2 conv, BN, ReLU, 3×3/2 max-pool) or ``"cifar"`` (3×3 conv, BN, ReLU).
    stem_width: channels of the stem convolution.
    stage_strides: stride of each stage's first unit; default 1 for the first stage, 2 after.
    expansion: bottleneck output / bottleneck width (4 in all three papers).
    cardinality: ResNeXt groups C of the bottleneck 3×3.
    bottleneck_width: ResNeXt width per group d at the first stage (doubles with
      ``stage_widths``); None for a ResNet bottleneck of width ``stage_widths[i]``.
    width_multiplier: multiplies the bottleneck width (wide ResNets, e.g. 2) or, for
      basic units, every unit's width.
    stride_on: bottleneck stride placement, ``"conv1x1"`` (paper) or ``"conv3x3"`` (v1.5).
    shortcut: one of ``shortcuts.SHORTCUTS``: ``"A"``, ``"B"``, ``"C"``, ``"scale"``,
      ``"gate"``, ``"shortcut_gate"``, ``"conv1x1"``, ``"dropout"``, ``"none"`` (plain net).
    downsample: for the Identity-Mappings variants (scale, gate, shortcut_gate,
      dropout), how the shortcut matches shapes where they change: ``"A"`` or ``"B"``.
    shortcut_scale, scale_residual: λ of the ``"scale"`` shortcut and whether F is scaled too.
    gate_bias_init: initial gate bias b_g of the gating shortcuts (−6 in the paper).
    shortcut_dropout_rate: dropout rate of the ``"dropout"`` shortcut.
    unit_order: one of ``blocks.UNIT_ORDERS``; the pre-activation orders add the
      final BN-ReLU (``full_preact``) or ReLU (``relu_preact``) before pooling.
    zero_init_residual: zero-initialise each unit's last BN scale (off, as in the papers).
    input_channels: expected channels of the input images.
    dtype, param_dtype: compute and parameter dtypes (e.g. bfloat16 / float32).
    bn_momentum, bn_epsilon: BatchNorm running-average momentum and epsilon.
    bn_axis_name: average BN moments over this named mesh axis (inside ``jax.shard_map``).
    bn_group_size: ghost BN: statistics over groups of this many examples.
  """
  stage_sizes: Sequence[int]
  stage_widths: Sequence[int] = (64, 128, 256, 512)
  block: str = "bottleneck"
  num_classes: int = 1000
  stem: str = "imagenet"
  stem_width: int = 64
  stage_strides: Optional[Sequence[int]] = None
  expansion: int = 4
  cardinality: int = 1
  bottleneck_width: Optional[int] = None
  width_multiplier: float = 1.0
  stride_on: str = "conv1x1"
  shortcut: str = "B"
  downsample: str = "A"
  shortcut_scale: float = 0.5
  scale_residual: bool = False
  gate_bias_init: float = -6.0
  shortcut_dropout_rate: float = 0.5
  unit_order: str = "original"
  zero_init_residual: bool = False
  input_channels: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None
  bn_group_size: Optional[int] = None

  def __post_init__(self):
    _check_choice("block", self.block, tuple(BLOCKS))
    _check_choice("stem", self.stem, STEMS)
    _check_choice("shortcut", self.shortcut, shortcuts_lib.SHORTCUTS)
    _check_choice("downsample", self.downsample, ("A", "B"))
    _check_choice("unit_order", self.unit_order, blocks_lib.UNIT_ORDERS)
    _check_choice("stride_on", self.stride_on, blocks_lib.STRIDE_PLACEMENTS)
    if len(self.stage_widths) != len(self.stage_sizes):
      raise ValueError(f"stage_widths {tuple(self.stage_widths)} and stage_sizes {tuple(self.stage_sizes)} "
                       "must have the same length")
    if self.stage_strides is not None and len(self.stage_strides) != len(self.stage_sizes):
      raise ValueError(f"stage_strides {tuple(self.stage_strides)} must have one entry per stage "
                       f"({len(self.stage_sizes)})")
    if any(n < 1 for n in self.stage_sizes):
      raise ValueError(f"stage_sizes {tuple(self.stage_sizes)} must all be >= 1")
    super().__post_init__()

  # -- stage table -------------------------------------------------------------
  def unit_features(self, stage: int) -> tuple[int, Optional[int]]:
    """(output channels, bottleneck width or None) of the units of ``stage`` (0-based)."""
    width = self.stage_widths[stage]
    if self.block == "basic":
      return int(width * self.width_multiplier), None
    if self.bottleneck_width is None:
      inner = int(width * self.width_multiplier)
    else:
      inner = int(width * self.width_multiplier * self.bottleneck_width / self.stage_widths[0]) * self.cardinality
    return width * self.expansion, inner

  def strides_of(self, stage: int) -> int:
    if self.stage_strides is not None:
      return self.stage_strides[stage]
    return 1 if stage == 0 else 2

  # -- forward -----------------------------------------------------------------
  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
    if x.ndim != 4 or x.shape[-1] != self.input_channels:
      raise ValueError(f"expected images of shape (batch, height, width, {self.input_channels}) (NHWC), "
                       f"got shape {tuple(x.shape)}")
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                             kernel_init=conv_kernel_init)
    norm = functools.partial(BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, param_dtype=self.param_dtype,
                             axis_name=self.bn_axis_name, group_size=self.bn_group_size)
    shortcut = shortcuts_lib.make_shortcut(
        self.shortcut, downsample=self.downsample, scale=self.shortcut_scale,
        scale_residual=self.scale_residual, gate_bias_init=self.gate_bias_init,
        dropout_rate=self.shortcut_dropout_rate)
    features = {}

    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(self.stem_width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="stem_conv")(x)
    else:
      x = conv(self.stem_width, (3, 3), (1, 1), padding=((1, 1), (1, 1)), name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x, train=train))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    features["stem"] = x

    block_cls = BLOCKS[self.block]
    for stage, num_units in enumerate(self.stage_sizes):
      out_features, inner = self.unit_features(stage)
      extra = {}
      if self.block == "bottleneck":
        extra = dict(bottleneck_features=inner, cardinality=self.cardinality, stride_on=self.stride_on)
      for unit in range(num_units):
        x = block_cls(
            features=out_features,
            strides=self.strides_of(stage) if unit == 0 else 1,
            conv=conv, norm=norm, shortcut=shortcut,
            unit_order=self.unit_order,
            first_unit=stage == 0 and unit == 0,
            zero_init_residual=self.zero_init_residual,
            name=f"stage{stage + 1}_unit{unit + 1}", **extra)(x, train=train)
      features[f"stage{stage + 1}"] = x

    if self.unit_order == "full_preact":
      x = nn.relu(norm(name="final_bn")(x, train=train))
    elif self.unit_order == "relu_preact":
      x = nn.relu(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    features["pre_logits"] = x
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
    logits = logits.astype(jnp.float32)
    if return_features:
      return logits, features
    return logits


class PlainNet(ResNet):
  """A plain network (He et al. 2015, §4.1): the same stack with no shortcuts."""
  shortcut: str = "none"
