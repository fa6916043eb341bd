"""The residual network: stem, stages of residual units, head, driven by a stage table.

One module covers every network of the three papers: ImageNet ResNets (He et al.
2015, Table 1), CIFAR 6n+2 ResNets and plain nets (§4.2), pre-activation ResNets
(He et al. 2016) and ResNeXt (Xie et al. 2017). Named configurations live in
``registry.py``; every field here can be overridden to build a variant.
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import errors
from resnet_jax.models import blocks as blocks_lib
from resnet_jax.models import layers
from resnet_jax.models import shortcuts as shortcuts_lib
from resnet_jax.models import stems as stems_lib
from resnet_jax.models.layers import conv_kernel_init  # noqa: F401  (re-exported)
from resnet_jax.models.norm import NORMS, BatchNorm
from resnet_jax.models.parts import PartTable

BLOCKS = PartTable("block", {"basic": blocks_lib.BasicBlock, "bottleneck": blocks_lib.BottleneckBlock},
                   "a ResidualUnit subclass",
                   accepts=lambda v: isinstance(v, type) and issubclass(v, blocks_lib.ResidualUnit))
STEMS = stems_lib.STEMS
# Policies of ``jax.checkpoint_policies`` that ``remat`` accepts by name.
REMAT_POLICIES = ("everything_saveable", "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")

# ResNet fields from before ``shortcut_options`` (deprecated): field -> (the shortcut option it
# sets, its old default). An old default is ignored where the shortcut does not read it.
LEGACY_SHORTCUT_FIELDS = {
    "downsample": ("downsample", "A"),
    "shortcut_scale": ("scale", 0.5),
    "scale_residual": ("scale_residual", False),
    "gate_bias_init": ("gate_bias_init", -6.0),
    "shortcut_dropout_rate": ("rate", 0.5),
}


def _check_choice(field: str, value: Any, choices: Sequence[Any], other: str = "") -> None:
  if value not in choices:
    raise errors.InputError(f"unknown {field} {value!r}: valid choices are {', '.join(map(str, choices))}{other}")


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_number(field: str, value: Any, low: float, high: float = float("inf"),
                  integer: bool = False, closed_high: bool = True, optional: bool = False) -> None:
  """`value` is a number in [low, high] (or [low, high)), an int if `integer`, or None if `optional`."""
  if optional and value is None:
    return
  ok = (isinstance(value, numbers.Integral) and not isinstance(value, bool)) if integer else _is_number(value)
  if ok:
    ok = low <= value and (value <= high if closed_high else value < high)
  if not ok:
    kind = "an integer" if integer else "a number"
    if high != float("inf"):
      bound = f" in [{low}, {high}{']' if closed_high else ')'}"
    else:
      bound = f" >= {low}" if low != float("-inf") else ""
    raise errors.InputError(f"{field}={value!r} must be {kind}{bound}{' or None' if optional else ''}")


def _declares(cls: type, field: str) -> bool:
  return dataclasses.is_dataclass(cls) and any(f.name == field for f in dataclasses.fields(cls))


def _legacy_shortcut_options(net: "ResNet") -> Dict[str, Any]:
  """The shortcut options set through the deprecated flat fields, checked under their old names."""
  options = {}
  for field, (option, default) in LEGACY_SHORTCUT_FIELDS.items():
    value = getattr(net, field)
    if value is None:
      continue
    warnings.warn(f"ResNet field {field} is deprecated: use shortcut_options={{{option!r}: {value!r}}}",
                  DeprecationWarning, stacklevel=4)
    if field == "downsample":
      _check_choice("downsample", value, shortcuts_lib.DOWNSAMPLES)
    readers = [n for n in shortcuts_lib.SHORTCUTS if option in shortcuts_lib.shortcut_class(n)[0].option_names()]
    if isinstance(net.shortcut, str) and net.shortcut not in readers:
      if value != default:
        raise errors.InputError(f"{field}={value!r} has no effect with shortcut={net.shortcut!r}: it applies to "
                         f"shortcut={' or '.join(map(repr, readers))} (leave it unset otherwise)")
      continue
    shortcuts_lib.shortcut_class(readers[0])[0].check_option(option, value, label=field)
    options[option] = value
  return options


class ResNet(nn.Module):
  """A residual (or plain) network.

  Layer choices are names (configs stay plain data) or callables:

  * ``norm``: ``"batch"`` (``BatchNorm`` with the ``bn_*`` fields), ``"group"``
    (GroupNorm, 32 groups), ``"layer"``, or a constructor called as
    ``norm(name=, dtype=, param_dtype=, [scale_init=])`` whose module is applied
    as ``m(x, train=bool)``; wrap stock Flax norms with ``flax_norm``, e.g.
    ``flax_norm(nn.GroupNorm, num_groups=8)``.
  * ``conv``: ``"conv"`` (bias-free, He-normal fan-out) or a ``flax.linen.Conv``-
    compatible constructor ``conv(features, kernel_size, strides, padding=,
    feature_group_count=, name=, dtype=, param_dtype=, [kernel_init=, use_bias=,
    bias_init=])``.
  * ``act``: a name in ``layers.ACTIVATIONS`` (``"relu"``, ``"gelu"``, ``"silu"``, ...)
    or a function of one array.
  * ``stem``: ``"imagenet"``, ``"cifar"`` or a module class built as
    ``stem(width=stem_width, conv=, norm=, act=, name="stem")`` and applied as
    ``stem(x, train)``; the built-in stems keep ``stem_conv``/``stem_bn`` at the top level.
  * ``block``: ``"basic"``, ``"bottleneck"`` or a ``ResidualUnit`` subclass; its
    class attribute ``expansion`` sets the unit widths, and it receives
    ``bottleneck_features``/``cardinality``/``stride_on`` only if it declares them.
  * ``shortcut``: a name below or a factory called as ``shortcut(features=,
    strides=, conv=, norm=, name=)`` whose module is applied as
    ``m(x, residual, train=, preactivated=)``; ``shortcut_options`` are passed to it.

  Each kind's names live in one ``PartTable`` (``NORMS``, ``CONVS``, ``ACTIVATIONS``,
  ``STEMS``, ``BLOCKS``, ``SHORTCUTS``), which also resolves them.

  The network binds its ``dtype`` and ``param_dtype`` into ``conv`` and ``norm``.

  Attributes:
    stage_sizes: residual units per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    stage_widths: per-stage base widths: output channels of a basic unit, or the
      1×1-3×3 width of a bottleneck (whose output is ``expansion`` times wider).
    block: see above.
    num_classes: classifier outputs; 0 for no classifier: the output is then the
      pooled float32 features of shape (batch, channels), as in timm.
    stem: see above. ``"imagenet"``: 7×7/2 conv, BN, ReLU, 3×3/2 max-pool;
      ``"cifar"``: 3×3 conv, BN, ReLU.
    stem_width: channels of the stem convolution.
    stage_strides: stride of each stage's first unit; default 1 for the first stage, 2 after.
    expansion: unit output / stage width; None takes the block's ``expansion``
      (1 basic, 4 bottleneck, as in all three papers).
    cardinality: ResNeXt groups C of the bottleneck 3×3.
    bottleneck_width: ResNeXt width per group d at the first stage (doubles with
      ``stage_widths``); None for a ResNet bottleneck of width ``stage_widths[i]``.
    width_multiplier: multiplies the bottleneck width (wide ResNets, e.g. 2) or, for
      blocks without a bottleneck, every unit's width.
    stride_on: bottleneck stride placement, ``"conv1x1"`` (paper) or ``"conv3x3"`` (v1.5).
    shortcut: one of ``shortcuts.SHORTCUTS``: ``"A"``, ``"B"``, ``"C"``, ``"scale"``,
      ``"gate"``, ``"shortcut_gate"``, ``"conv1x1"``, ``"dropout"``, ``"none"`` (plain
      net), or a factory (see above).
    shortcut_options: the shortcut's own options, as one mapping (an option the named
      shortcut does not read is refused): for the Identity-Mappings variants (scale,
      gate, shortcut_gate, dropout) ``downsample`` (``"A"`` or ``"B"``: how shapes are
      matched where they change); ``scale`` (λ) and ``scale_residual`` (F scaled too) of
      ``"scale"``; ``gate_bias_init`` (b_g, −6 in the paper) of the gates; ``rate`` of
      ``"dropout"``. E.g. ``shortcut="gate", shortcut_options={"gate_bias_init": -6.0}``.
    downsample, shortcut_scale, scale_residual, gate_bias_init, shortcut_dropout_rate:
      deprecated spellings of ``shortcut_options`` (None: unset).
    unit_order: one of ``blocks.UNIT_ORDERS``; the pre-activation orders add the
      final norm-activation (``full_preact``) or activation (``relu_preact``) before pooling.
    zero_init_residual: zero-initialise each unit's last norm scale (off, as in the papers).
    norm, conv, act: see above.
    remat: rematerialise each residual unit in the backward pass (``nn.remat``) to
      save memory: False, True, a name in ``REMAT_POLICIES`` or a
      ``jax.checkpoint_policies`` policy. Parameters and results are unchanged.
    input_channels: expected channels of the input images.
    dtype, param_dtype: compute and parameter dtypes (e.g. bfloat16 / float32).
    bn_momentum, bn_epsilon: BatchNorm running-average momentum and epsilon (``norm="batch"``).
    bn_axis_name: average BN moments over this named mesh axis (inside ``jax.shard_map``).
    bn_group_size: ghost BN: statistics over groups of this many examples.
    bn_unbiased_variance: the running variance tracks the unbiased batch variance, as
      PyTorch, Torch7 and Caffe (the papers' frameworks) do; False: the biased one (Flax).
  """
  stage_sizes: Sequence[int]
  stage_widths: Sequence[int] = (64, 128, 256, 512)
  block: Union[str, type] = "bottleneck"
  num_classes: int = 1000
  stem: Union[str, Callable[..., nn.Module]] = "imagenet"
  stem_width: int = 64
  stage_strides: Optional[Sequence[int]] = None
  expansion: Optional[int] = None
  cardinality: int = 1
  bottleneck_width: Optional[int] = None
  width_multiplier: float = 1.0
  stride_on: str = "conv1x1"
  shortcut: Union[str, Callable[..., nn.Module]] = "B"
  shortcut_options: Optional[Mapping[str, Any]] = None
  downsample: Optional[str] = None
  shortcut_scale: Optional[float] = None
  scale_residual: Optional[bool] = None
  gate_bias_init: Optional[float] = None
  shortcut_dropout_rate: Optional[float] = None
  unit_order: str = "original"
  zero_init_residual: bool = False
  norm: Union[str, Callable[..., nn.Module]] = "batch"
  conv: Union[str, Callable[..., nn.Module]] = "conv"
  act: Union[str, layers.Activation] = "relu"
  remat: Union[bool, str, Callable[..., bool]] = False
  input_channels: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None
  bn_group_size: Optional[int] = None
  bn_unbiased_variance: bool = False

  def __post_init__(self):
    for table, value in ((BLOCKS, self.block), (STEMS, self.stem), (shortcuts_lib.SHORTCUTS, self.shortcut), (NORMS, self.norm),
                         (layers.CONVS, self.conv), (layers.ACTIVATIONS, self.act)):
      table.check(value)
    if not (isinstance(self.remat, bool) or callable(self.remat)):
      _check_choice("remat", self.remat, REMAT_POLICIES, ", True, False or a jax.checkpoint_policies policy")
    self._shortcut_options()  # one-line errors now, not at the first call
    _check_choice("unit_order", self.unit_order, blocks_lib.UNIT_ORDERS)
    _check_choice("stride_on", self.stride_on, blocks_lib.STRIDE_PLACEMENTS)
    self._check_values()
    if len(self.stage_widths) != len(self.stage_sizes):
      raise errors.InputError(f"stage_widths {tuple(self.stage_widths)} and stage_sizes {tuple(self.stage_sizes)} "
                       "must have the same length")
    if self.stage_strides is not None and len(self.stage_strides) != len(self.stage_sizes):
      raise errors.InputError(f"stage_strides {tuple(self.stage_strides)} must have one entry per stage "
                       f"({len(self.stage_sizes)})")
    if self.num_classes < 0:
      raise errors.InputError(f"num_classes {self.num_classes} must be >= 0 (0: no classifier, pooled features out)")
    super().__post_init__()

  def _check_values(self) -> None:
    """One-line errors for values that would otherwise fail deep inside JAX, or do nothing."""
    for field in ("stage_sizes", "stage_widths") + (("stage_strides",) if self.stage_strides is not None else ()):
      if not isinstance(getattr(self, field), (tuple, list)):
        raise errors.InputError(f"{field}={getattr(self, field)!r} must be a sequence of integers, e.g. (3, 4, 6, 3)")
      for v in getattr(self, field):
        _check_number(f"{field} entry", v, 1, integer=True)
    _check_number("num_classes", self.num_classes, 0, integer=True)  # 0: no classifier, pooled features out
    _check_number("stem_width", self.stem_width, 1, integer=True)
    _check_number("expansion", self.expansion, 1, integer=True, optional=True)
    _check_number("cardinality", self.cardinality, 1, integer=True)
    _check_number("bottleneck_width", self.bottleneck_width, 1, integer=True, optional=True)
    _check_number("width_multiplier", self.width_multiplier, 0, closed_high=True)
    if self.width_multiplier == 0:
      raise errors.InputError("width_multiplier=0 must be positive")
    _check_number("input_channels", self.input_channels, 1, integer=True)
    if not isinstance(self.zero_init_residual, bool):
      raise errors.InputError(f"zero_init_residual={self.zero_init_residual!r} must be True or False")
    _check_number("bn_momentum", self.bn_momentum, 0.0, 1.0)
    _check_number("bn_epsilon", self.bn_epsilon, 0.0)
    if self.bn_epsilon == 0:
      raise errors.InputError("bn_epsilon=0 must be positive (it keeps 1/sqrt(var + eps) finite)")
    _check_number("bn_group_size", self.bn_group_size, 1, integer=True, optional=True)

  def _shortcut_options(self) -> Dict[str, Any]:
    """``shortcut_options`` merged with the deprecated flat fields, checked for the shortcut."""
    legacy = _legacy_shortcut_options(self)
    given = dict(self.shortcut_options or {})
    both = sorted(set(legacy) & set(given))
    if both:
      raise errors.InputError(f"shortcut option {both[0]!r} is set twice: in shortcut_options and by a deprecated "
                       "field; keep the shortcut_options one")
    options = {**legacy, **given}
    if isinstance(self.shortcut, str):
      shortcuts_lib.check_shortcut_options(self.shortcut, options)
    return options

  # -- stage table -------------------------------------------------------------
  @property
  def block_class(self) -> type:
    """The ``ResidualUnit`` subclass of every unit."""
    return BLOCKS.resolve(self.block)

  def unit_features(self, stage: int) -> tuple[int, Optional[int]]:
    """(output channels, bottleneck width or None) of the units of ``stage`` (0-based)."""
    block = self.block_class
    expansion = block.expansion if self.expansion is None else self.expansion
    width = self.stage_widths[stage]
    if not _declares(block, "bottleneck_features"):
      return int(width * self.width_multiplier) * expansion, None
    if self.bottleneck_width is None:
      inner = int(width * self.width_multiplier)
    else:
      inner = int(width * self.width_multiplier * self.bottleneck_width / self.stage_widths[0]) * self.cardinality
    return width * expansion, inner

  def strides_of(self, stage: int) -> int:
    if self.stage_strides is not None:
      return self.stage_strides[stage]
    return 1 if stage == 0 else 2

  # -- layer choices -----------------------------------------------------------
  def _layers(self):
    """(conv, norm, act, shortcut) constructors with the network's dtype and options bound."""
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = functools.partial(layers.CONVS.resolve(self.conv), **dtypes)
    norm = NORMS.resolve(self.norm)
    if self.norm == "batch":  # the network's BatchNorm fields (set by the engine from `config.bn`)
      norm = functools.partial(BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                               axis_name=self.bn_axis_name, group_size=self.bn_group_size,
                               unbiased_variance=self.bn_unbiased_variance)
    norm = functools.partial(norm, **dtypes)
    options = self._shortcut_options()
    if isinstance(self.shortcut, str):
      shortcut = shortcuts_lib.shortcut_factory(self.shortcut, options)
    else:  # a factory of the user's: its options are its own business
      shortcut = functools.partial(self.shortcut, **options) if options else self.shortcut
    return conv, norm, layers.ACTIVATIONS.resolve(self.act), shortcut

  def _unit_class(self) -> type:
    """The block class, wrapped in ``nn.remat`` (``train`` static) if asked."""
    block = self.block_class
    if self.remat is False:
      return block
    policy = self.remat
    if policy is True:
      policy = None
    elif isinstance(policy, str):
      policy = getattr(jax.checkpoint_policies, policy)
    # (self, x, train): train decides Python control flow, so it must be static.
    return nn.remat(block, static_argnums=(2,), policy=policy)

  # -- forward -----------------------------------------------------------------
  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
    if x.ndim != 4 or x.shape[-1] != self.input_channels:
      raise errors.InputError(f"expected images of shape (batch, height, width, {self.input_channels}) (NHWC), "
                       f"got shape {tuple(x.shape)}")
    conv, norm, act, shortcut = self._layers()
    features = {}

    x = x.astype(self.dtype)
    stem_cls = STEMS.resolve(self.stem)
    stem = stem_cls(width=self.stem_width, conv=conv, norm=norm, act=act, name="stem")
    if STEMS.name_of(stem_cls) is not None:
      nn.share_scope(self, stem)  # the papers' stems: ``stem_conv``, ``stem_bn`` at the top level
    x = stem(x, train)
    features["stem"] = x

    block = self.block_class
    unit_cls = self._unit_class()
    for stage, num_units in enumerate(self.stage_sizes):
      out_features, inner = self.unit_features(stage)
      options = dict(bottleneck_features=inner, cardinality=self.cardinality, stride_on=self.stride_on)
      extra = {k: v for k, v in options.items() if _declares(block, k)}
      for unit in range(num_units):
        x = unit_cls(
            features=out_features,
            strides=self.strides_of(stage) if unit == 0 else 1,
            conv=conv, norm=norm, act=act, shortcut=shortcut,
            unit_order=self.unit_order,
            first_unit=stage == 0 and unit == 0,
            zero_init_residual=self.zero_init_residual,
            name=f"stage{stage + 1}_unit{unit + 1}", **extra)(x, train)
      features[f"stage{stage + 1}"] = x

    if self.unit_order == "full_preact":
      x = act(norm(name="final_bn")(x, train=train))
    elif self.unit_order == "relu_preact":
      x = act(x)
    accum = jnp.promote_types(self.dtype, jnp.float32)  # float32 logits for bf16 nets
    x = jnp.mean(x.astype(accum), axis=(1, 2))
    features["pre_logits"] = x
    if self.num_classes == 0:
      out = x
    else:
      out = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                     kernel_init=layers.head_kernel_init, bias_init=nn.initializers.zeros, name="head")(x)
      out = out.astype(accum)
    if return_features:
      return out, features
    return out


class PlainNet(ResNet):
  """A plain network (He et al. 2015, §4.1): the same stack with no shortcuts."""
  shortcut: str = "none"
