"""The residual network: stem, stages of residual units, head, driven by a stage table.

One module covers every network of the three papers: ImageNet ResNets (He et al.
2015, Table 1), CIFAR 6n+2 ResNets and plain nets (§4.2), pre-activation ResNets
(He et al. 2016) and ResNeXt (Xie et al. 2017); and the ResNets of 2018–2021 built from
the same parts: ResNet-C/D (He et al. 2019), SE/ECA channel attention (Hu et al. 2018,
Wang et al. 2020), stochastic depth (Huang et al. 2016), ResNet-RS (Bello et al. 2021),
BiT (Kolesnikov et al. 2020), anti-aliased downsampling (Zhang 2019) and dilated
backbones (``output_stride``, Chen et al. 2017); and the units that start as their shortcut,
for training without normalisation (``identity_init``: SkipInit, De & Smith 2020; ReZero,
Bachlechner et al. 2020; Fixup, Zhang et al. 2019). Named configurations live in
``registry.py``; every field here can be overridden to build a variant.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.errors import InputError
from resnet_jax.models import anti_alias as anti_alias_lib
from resnet_jax.models import attention as attention_lib
from resnet_jax.models import blocks as blocks_lib
from resnet_jax.models import drop_path as drop_path_lib
from resnet_jax.models import identity_init as identity_init_lib
from resnet_jax.models import layers
from resnet_jax.models import shortcuts as shortcuts_lib
from resnet_jax.models import stems as stems_lib
from resnet_jax.models.layers import conv_kernel_init  # noqa: F401  (re-exported)
from resnet_jax.models.norm import NORMS, NoNorm, check_norm_options
from resnet_jax.models.parts import PartTable, is_number, part_class

BLOCKS = PartTable("block", {"basic": blocks_lib.BasicBlock, "bottleneck": blocks_lib.BottleneckBlock},
                   "a ResidualUnit subclass",
                   accepts=lambda v: isinstance(v, type) and issubclass(v, blocks_lib.ResidualUnit))
STEMS = stems_lib.STEMS
ATTENTIONS = attention_lib.ATTENTIONS
ANTI_ALIASING = anti_alias_lib.ANTI_ALIASING
DROP_PATH_RULES = drop_path_lib.DROP_PATH_RULES
IDENTITY_INITS = identity_init_lib.IDENTITY_INITS
# Policies of ``jax.checkpoint_policies`` that ``remat`` accepts by name.
REMAT_POLICIES = ("everything_saveable", "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")


def _check_choice(field: str, value: Any, choices: Sequence[Any], other: str = "") -> None:
  if value not in choices:
    raise InputError(f"unknown {field} {value!r}: valid choices are {', '.join(map(str, choices))}{other}")


def _check_number(field: str, value: Any, low: float, high: float = float("inf"),
                  integer: bool = False, closed_high: bool = True, optional: bool = False) -> None:
  """`value` is a number in [low, high] (or [low, high)), an int if `integer`, or None if `optional`."""
  if optional and value is None:
    return
  ok = (isinstance(value, numbers.Integral) and not isinstance(value, bool)) if integer else is_number(value)
  if ok:
    ok = low <= value and (value <= high if closed_high else value < high)
  if not ok:
    kind = "an integer" if integer else "a number"
    if high != float("inf"):
      bound = f" in [{low}, {high}{']' if closed_high else ')'}"
    else:
      bound = f" >= {low}" if low != float("-inf") else ""
    raise InputError(f"{field}={value!r} must be {kind}{bound}{' or None' if optional else ''}")


def _declares(cls: type, field: str) -> bool:
  return dataclasses.is_dataclass(cls) and any(f.name == field for f in dataclasses.fields(cls))


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """How a stage's first unit downsamples: its stride, the stage's dilation, and the
  dilation its first 3×3 keeps from the stage before (``first_dilation``)."""
  strides: int
  dilation: int = 1
  first_dilation: Optional[int] = None


class ResNet(nn.Module):
  """A residual (or plain) network.

  Layer choices are names (configs stay plain data) or callables:

  * ``norm``: ``"batch"`` (``BatchNorm``), ``"group"`` (GroupNorm, 32 groups), ``"layer"``,
    ``"none"`` (no normalisation), or a constructor called as ``norm(name=, dtype=, param_dtype=, [scale_init=])`` whose
    module is applied as ``m(x, train=bool)``; wrap stock Flax norms with ``flax_norm``,
    e.g. ``flax_norm(nn.GroupNorm, num_groups=8)``. ``norm_options`` are passed to it.
  * ``conv``: ``"conv"`` (bias-free, He-normal fan-out), ``"weight_standardized"`` (BiT) or a
    ``flax.linen.Conv``-compatible constructor ``conv(features, kernel_size, strides,
    padding=, feature_group_count=, name=, dtype=, param_dtype=, [kernel_init=, use_bias=,
    bias_init=, kernel_dilation=])``.
  * ``act``: a name in ``layers.ACTIVATIONS`` (``"relu"``, ``"gelu"``, ``"silu"``, ...)
    or a function of one array.
  * ``stem``: a name in ``STEMS`` (``"imagenet"``, ``"cifar"``, ``"deep"``, ``"deep_strided"``,
    ``"preact"``, ``"bit"``) or a module class built as ``stem(width=stem_width, conv=,
    norm=, act=, name="stem")`` and applied as ``stem(x, train)``; the built-in stems keep
    ``stem_conv``/``stem_bn`` (``stem_conv1``, ...) at the top level.
  * ``block``: ``"basic"``, ``"bottleneck"`` or a ``ResidualUnit`` subclass; its
    class attribute ``expansion`` sets the unit widths, and it receives
    ``bottleneck_features``/``cardinality``/``stride_on`` only if it declares them.
  * ``shortcut``: a name below or a factory called as ``shortcut(features=,
    strides=, conv=, norm=, name=)`` whose module is applied as
    ``m(x, residual, train=, preactivated=)``; ``shortcut_options`` are passed to it.
  * ``attention``: None, ``"se"``, ``"eca"`` or a constructor ``attention(name=, dtype=,
    param_dtype=)`` of a module applied as ``m(x)`` to each residual branch's output;
    ``attention_options`` are passed to it.
  * ``anti_alias``: None, ``"blur"``, ``"avg"`` or a function ``aa(x, strides)``.
  * ``identity_init``: None, ``"skipinit"``, ``"rezero"``, ``"fixup"`` (needs ``norm="none"``)
    or an ``identity_init.IdentityInit`` subclass: every unit starts as its shortcut.

  Each kind's names live in one ``PartTable`` (``NORMS``, ``CONVS``, ``ACTIVATIONS``,
  ``STEMS``, ``BLOCKS``, ``SHORTCUTS``, ``ATTENTIONS``, ``ANTI_ALIASING``, ``IDENTITY_INITS``), which also
  resolves them. The network binds its ``dtype`` and ``param_dtype`` into ``conv``,
  ``norm`` and ``attention``.

  Attributes:
    stage_sizes: residual units per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    stage_widths: per-stage base widths: output channels of a basic unit, or the
      1×1-3×3 width of a bottleneck (whose output is ``expansion`` times wider).
    block: see above.
    num_classes: classifier outputs; 0 for no classifier: the output is then the
      pooled float32 features of shape (batch, channels), as in timm.
    stem: see above. ``"imagenet"``: 7×7/2 conv, BN, ReLU, 3×3/2 max-pool;
      ``"cifar"``: 3×3 conv, BN, ReLU; ``"deep"``: three 3×3 convs (ResNet-C, He et al.
      2019) then the max-pool; ``"deep_strided"``: the same with a stride-2 3×3 conv for the
      max-pool (ResNet-RS); ``"preact"``/``"bit"``: 7×7/2 conv and max-pool without norm,
      for pre-activation networks whose first unit normalises (timm's ResNetV2, BiT).
    stem_width: output channels of the stem.
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
      shortcut does not read is refused): ``avg_down`` (ResNet-D, He et al. 2019: 2×2
      average pool before a stride-1 projection) of every shortcut that projects; for the
      Identity-Mappings variants (scale, gate, shortcut_gate, dropout) ``downsample``
      (``"A"`` or ``"B"``: how shapes are matched where they change); ``scale`` (λ) and
      ``scale_residual`` (F scaled too) of ``"scale"``; ``gate_bias_init`` (b_g, −6 in the
      paper) of the gates; ``rate`` of ``"dropout"``. E.g. ``shortcut="gate",
      shortcut_options={"gate_bias_init": -6.0}``.
    unit_order: one of ``blocks.UNIT_ORDERS``; the pre-activation orders add the
      final norm-activation (``full_preact``) or activation (``relu_preact``) before pooling.
    zero_init_residual: zero-initialise each unit's last norm scale (off, as in the papers).
    norm, conv, act: see above.
    norm_options: the norm's own options, as one mapping (an option the norm does not read
      is refused). ``"batch"``: ``momentum`` (0.9) and ``epsilon`` (1e-5); ``axis_name``
      (average the moments over this named mesh axis inside ``jax.shard_map``);
      ``group_size`` (ghost BN: statistics over groups of this many examples);
      ``unbiased_variance`` (the running variance tracks the unbiased batch variance, as
      PyTorch, Torch7 and Caffe do; False: the biased one, as Flax). ``"group"``:
      ``num_groups``, ``epsilon`` (Flax's 1e-6; PyTorch's and timm's 1e-5), ...
    attention, attention_options: see above; ``"se"``: ``ratio`` (1/16), ``divisor`` (8);
      ``"eca"``: ``kernel_size`` (None: from the channels), ``gamma``, ``beta``.
    drop_path_rate: stochastic depth (Huang et al. 2016): the last unit's probability of
      skipping its residual branch in training (timm's ``drop_path_rate``); earlier units'
      grow linearly to it (``drop_path_rule``). 0: off. Needs a ``"dropout"`` rng in training.
    drop_path_rule: ``"linear"`` (the paper: unit l of L drops with rate·l/L) or ``"timm"``
      (rate·(l−1)/(L−1)); see ``drop_path.py``.
    identity_init: see above. ``"skipinit"``/``"rezero"``: α·F(x), one learnable α per unit
      starting at 0 (``identity_init_options``: ``alpha``); ``"fixup"`` (Zhang et al. 2019,
      §3): each branch's convolutions but the last He-initialised × L^(-1/(2m-2)), the last and
      the classifier at 0, a scalar multiplier ending each branch and a scalar bias before each
      convolution, activation and the classifier (the stem's bias takes its norm's place).
    anti_alias: see above (Zhang 2019): strided convolutions keep stride 1 and the filter
      subsamples after their norm and activation; the stem's max-pool too.
    output_stride: None, or the network's total stride for dense prediction (8 or 16 for
      the ImageNet stems): the stages that would go beyond it keep their resolution, and
      their 3×3 convolutions dilate instead (DeepLab, Chen et al. 2017; timm's rule).
    remat: rematerialise each residual unit in the backward pass (``nn.remat``) to
      save memory: False, True, a name in ``REMAT_POLICIES`` or a
      ``jax.checkpoint_policies`` policy. Parameters and results are unchanged.
    input_channels: expected channels of the input images.
    dtype, param_dtype: compute and parameter dtypes (e.g. bfloat16 / float32).
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
  unit_order: str = "original"
  zero_init_residual: bool = False
  norm: Union[str, Callable[..., nn.Module]] = "batch"
  norm_options: Optional[Mapping[str, Any]] = None
  conv: Union[str, Callable[..., nn.Module]] = "conv"
  act: Union[str, layers.Activation] = "relu"
  attention: Union[None, str, Callable[..., nn.Module]] = None
  attention_options: Optional[Mapping[str, Any]] = None
  drop_path_rate: float = 0.0
  drop_path_rule: str = "linear"
  anti_alias: Union[None, str, Callable[..., jax.Array]] = None
  identity_init: Union[None, str, type] = None
  identity_init_options: Optional[Mapping[str, Any]] = None
  output_stride: Optional[int] = None
  remat: Union[bool, str, Callable[..., bool]] = False
  input_channels: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    for table, value in ((BLOCKS, self.block), (STEMS, self.stem), (shortcuts_lib.SHORTCUTS, self.shortcut),
                         (NORMS, self.norm), (layers.CONVS, self.conv), (layers.ACTIVATIONS, self.act)):
      table.check(value)
    for table, value in ((ATTENTIONS, self.attention), (ANTI_ALIASING, self.anti_alias),
                         (IDENTITY_INITS, self.identity_init)):
      if value is not None:
        table.check(value)
    if not (isinstance(self.remat, bool) or callable(self.remat)):
      _check_choice("remat", self.remat, REMAT_POLICIES, ", True, False or a jax.checkpoint_policies policy")
    self._shortcut_options()  # one-line errors now, not at the first call
    check_norm_options(self.norm, self.norm_options)
    if self.attention is not None:
      attention_lib.check_attention_options(self.attention, self.attention_options)
    elif self.attention_options:
      raise InputError(f"attention_options={dict(self.attention_options)!r} need an attention "
                       f"(attention={' or '.join(map(repr, ATTENTIONS))})")
    self._check_identity_init()
    _check_choice("unit_order", self.unit_order, blocks_lib.UNIT_ORDERS)
    _check_choice("stride_on", self.stride_on, blocks_lib.STRIDE_PLACEMENTS)
    _check_choice("drop_path_rule", self.drop_path_rule, DROP_PATH_RULES)
    self._check_values()
    self._check_stages()
    self._check_drop_path()
    self._check_output_stride()
    self._check_anti_alias()
    super().__post_init__()

  def _check_values(self) -> None:
    """One-line errors for values that would otherwise fail deep inside JAX, or do nothing."""
    for field in ("stage_sizes", "stage_widths") + (("stage_strides",) if self.stage_strides is not None else ()):
      if not isinstance(getattr(self, field), (tuple, list)):
        raise InputError(f"{field}={getattr(self, field)!r} must be a sequence of integers, e.g. (3, 4, 6, 3)")
      for v in getattr(self, field):
        _check_number(f"{field} entry", v, 1, integer=True)
    _check_number("num_classes", self.num_classes, 0, integer=True)  # 0: no classifier, pooled features out
    _check_number("stem_width", self.stem_width, 1, integer=True)
    _check_number("expansion", self.expansion, 1, integer=True, optional=True)
    _check_number("cardinality", self.cardinality, 1, integer=True)
    _check_number("bottleneck_width", self.bottleneck_width, 1, integer=True, optional=True)
    _check_number("width_multiplier", self.width_multiplier, 0, closed_high=True)
    if self.width_multiplier == 0:
      raise InputError("width_multiplier=0 must be positive")
    _check_number("input_channels", self.input_channels, 1, integer=True)
    if not isinstance(self.zero_init_residual, bool):
      raise InputError(f"zero_init_residual={self.zero_init_residual!r} must be True or False")
    _check_number("drop_path_rate", self.drop_path_rate, 0.0, 1.0, closed_high=False)

  def _check_stages(self) -> None:
    if len(self.stage_widths) != len(self.stage_sizes):
      raise InputError(f"stage_widths {tuple(self.stage_widths)} and stage_sizes {tuple(self.stage_sizes)} "
                       "must have the same length")
    if self.stage_strides is not None and len(self.stage_strides) != len(self.stage_sizes):
      raise InputError(f"stage_strides {tuple(self.stage_strides)} must have one entry per stage "
                       f"({len(self.stage_sizes)})")

  def _check_drop_path(self) -> None:
    if self.drop_path_rate > 0 and self.shortcut == "none":
      raise InputError(f"drop_path_rate={self.drop_path_rate} drops residual branches, and a plain net "
                       "(shortcut='none') has none: use a residual shortcut or drop_path_rate=0")

  def _check_identity_init(self) -> None:
    if self.identity_init is None:
      if self.identity_init_options:
        raise InputError(f"identity_init_options={dict(self.identity_init_options)!r} need an identity_init "
                         f"(identity_init={' or '.join(map(repr, IDENTITY_INITS))})")
      return
    identity_init_lib.check_identity_init_options(self.identity_init, self.identity_init_options)
    part = identity_init_lib.identity_init_class(self.identity_init)
    if part.NEEDS_NO_NORM and part_class(NORMS.resolve(self.norm)) is not NoNorm:
      raise InputError(f"identity_init={self.identity_init!r} trains without normalisation (Zhang et al. 2019): "
                       f"use norm='none', not norm={self.norm!r}")

  def _check_output_stride(self) -> None:
    """`output_stride`: None, or a power of two the stages reach before the network's own stride."""
    if self.output_stride is None:
      return
    reduction = getattr(STEMS.resolve(self.stem), "reduction", None)
    if reduction is None:
      raise InputError(f"output_stride={self.output_stride!r} needs a stem that states its stride "
                       "(a class attribute `reduction`, as the built-in stems have)")
    natural = reduction * math.prod(self.strides_of(i) for i in range(len(self.stage_sizes)))
    valid = [2 ** k for k in range(12) if reduction <= 2 ** k < natural]
    if self.output_stride not in valid:
      raise InputError(f"output_stride={self.output_stride!r} must be None or one of "
                       f"{', '.join(map(str, valid)) or 'nothing'} (this network's stride is {natural})")
    if self.anti_alias is not None:
      raise InputError(f"anti_alias={self.anti_alias!r} with output_stride={self.output_stride} is not "
                       "supported: build the dilated backbone without anti-aliasing")

  def _check_anti_alias(self) -> None:
    if self.anti_alias is not None and not _declares(STEMS.resolve(self.stem), "anti_alias"):
      raise InputError(f"anti_alias={self.anti_alias!r}: stem {self.stem!r} has no strided pooling to "
                       "anti-alias (use a stem that declares an anti_alias field, e.g. 'imagenet')")

  def _shortcut_options(self) -> Dict[str, Any]:
    """``shortcut_options``, checked for the named shortcut."""
    options = dict(self.shortcut_options or {})
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
    """The stride the stage table gives stage ``stage``'s first unit (before ``output_stride``)."""
    if self.stage_strides is not None:
      return self.stage_strides[stage]
    return 1 if stage == 0 else 2

  def stage_plan(self) -> List[StagePlan]:
    """Each stage's stride and dilation. With ``output_stride``, a stage whose input is already
    at that stride keeps its resolution and multiplies the dilation by its stride instead
    (timm's and DeepLab's rule); its first unit's first 3×3 keeps the previous dilation."""
    if self.output_stride is None:
      return [StagePlan(self.strides_of(i)) for i in range(len(self.stage_sizes))]
    stride, dilation, plan = STEMS.resolve(self.stem).reduction, 1, []
    for stage in range(len(self.stage_sizes)):
      s, previous = self.strides_of(stage), dilation
      if stride >= self.output_stride:
        dilation, s = dilation * s, 1
      stride *= s
      plan.append(StagePlan(s, dilation, previous))
    return plan

  def drop_path_rates(self) -> List[float]:
    """The stochastic-depth drop rate of every unit, first to last (``drop_path.drop_rates``)."""
    return drop_path_lib.drop_rates(self.drop_path_rate, sum(self.stage_sizes), self.drop_path_rule)

  # -- layer choices -----------------------------------------------------------
  def _layers(self):
    """(conv, norm, act, shortcut) constructors with the network's dtype and options bound."""
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = functools.partial(layers.CONVS.resolve(self.conv), **dtypes)
    norm = functools.partial(NORMS.resolve(self.norm), **dict(self.norm_options or {}), **dtypes)
    options = self._shortcut_options()
    if isinstance(self.shortcut, str):
      shortcut = shortcuts_lib.shortcut_factory(self.shortcut, options)
    else:  # a factory of the user's: its options are its own business
      shortcut = functools.partial(self.shortcut, **options) if options else self.shortcut
    return conv, norm, layers.ACTIVATIONS.resolve(self.act), shortcut

  def _attention(self) -> Optional[Callable[..., nn.Module]]:
    if self.attention is None:
      return None
    return functools.partial(ATTENTIONS.resolve(self.attention), dtype=self.dtype, param_dtype=self.param_dtype,
                             **dict(self.attention_options or {}))

  def _identity_init(self) -> Optional[type]:
    """The ``IdentityInit`` subclass of ``identity_init``, or None."""
    return None if self.identity_init is None else identity_init_lib.identity_init_class(self.identity_init)

  def _scalar_bias(self) -> Optional[Callable[..., nn.Module]]:
    """Fixup's scalar bias constructor where the identity-at-initialisation part asks for them."""
    part = self._identity_init()
    if part is None or not part.SCALAR_BIASES:
      return None
    return functools.partial(identity_init_lib.ScalarBias, dtype=self.dtype, param_dtype=self.param_dtype)

  def _branch_layers(self, stage: int) -> int:
    """m, the layers of one residual branch of ``stage`` (Fixup's L^(-1/(2m-2)))."""
    features, inner = self.unit_features(stage)
    options = dict(bottleneck_features=inner, cardinality=self.cardinality, stride_on=self.stride_on)
    block = self.block_class
    unit = block(features=features, parent=None, **{k: v for k, v in options.items() if _declares(block, k)})
    return len(list(unit.branch(features)))

  def _identity_init_fields(self, stage: int) -> Dict[str, Any]:
    """The units' fields of ``identity_init`` (none where it is off)."""
    part = self._identity_init()
    if part is None:
      return {}
    options = dict(self.identity_init_options or {})
    fields = {"identity_init": functools.partial(IDENTITY_INITS.resolve(self.identity_init), dtype=self.dtype,
                                                 param_dtype=self.param_dtype, **options)}
    if part.SCALAR_BIASES:
      fields["scalar_bias"] = self._scalar_bias()
    scale = part.branch_kernel_scale(sum(self.stage_sizes), self._branch_layers(stage))
    if scale is not None:
      fields["branch_kernel_scale"] = scale
    return fields

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

  def _unit_fields(self, stage: int, unit: int, plan: StagePlan, drop_rate: float) -> Dict[str, Any]:
    """The fields of one unit beyond the layer choices; the new parts' only where they are on."""
    block = self.block_class
    _, inner = self.unit_features(stage)
    options = dict(bottleneck_features=inner, cardinality=self.cardinality, stride_on=self.stride_on)
    fields = {k: v for k, v in options.items() if _declares(block, k)}
    fields.update(strides=plan.strides if unit == 0 else 1, unit_order=self.unit_order,
                  zero_init_residual=self.zero_init_residual)
    if drop_rate > 0:
      fields["drop_path_rate"] = drop_rate
    if plan.dilation > 1:
      fields.update(dilation=plan.dilation, first_dilation=plan.first_dilation if unit == 0 else None)
    if self.anti_alias is not None:
      fields["anti_alias"] = ANTI_ALIASING.resolve(self.anti_alias)
    return fields

  def _stem(self, x: jax.Array, conv, norm, act, train: bool) -> jax.Array:
    stem_cls = STEMS.resolve(self.stem)
    extra = {} if self.anti_alias is None else {"anti_alias": ANTI_ALIASING.resolve(self.anti_alias)}
    stem = stem_cls(width=self.stem_width, conv=conv, norm=norm, act=act, name="stem", **extra)
    if STEMS.name_of(stem_cls) is not None:
      nn.share_scope(self, stem)  # the built-in stems: ``stem_conv``, ``stem_bn`` at the top level
    return stem(x, train)

  # -- forward -----------------------------------------------------------------
  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
    if x.ndim != 4 or x.shape[-1] != self.input_channels:
      raise InputError(f"expected images of shape (batch, height, width, {self.input_channels}) (NHWC), "
                       f"got shape {tuple(x.shape)}")
    conv, norm, act, shortcut = self._layers()
    # Fixup's stem and final activation: a scalar bias where the norm would be (rule 3).
    outer_norm = self._scalar_bias() or norm
    x = self._stem(x.astype(self.dtype), conv, outer_norm, act, train)
    features = {"stem": x}
    stem_activates = getattr(STEMS.resolve(self.stem), "activates", True)
    unit_cls, attention, rates = self._unit_class(), self._attention(), iter(self.drop_path_rates())
    for stage, (num_units, plan) in enumerate(zip(self.stage_sizes, self.stage_plan())):
      out_features, _ = self.unit_features(stage)
      identity_init = self._identity_init_fields(stage)
      for unit in range(num_units):
        extra = {**self._unit_fields(stage, unit, plan, next(rates)), **identity_init}
        if attention is not None:
          extra["attention"] = attention
        x = unit_cls(features=out_features, conv=conv, norm=norm, act=act, shortcut=shortcut,
                     first_unit=stage == 0 and unit == 0 and stem_activates,
                     name=f"stage{stage + 1}_unit{unit + 1}", **extra)(x, train)
      features[f"stage{stage + 1}"] = x
    return self._head(x, features, outer_norm, act, train, return_features)

  def _head(self, x: jax.Array, features: Dict[str, jax.Array], norm, act, train: bool, return_features: bool):
    """The pre-activation networks' final norm-activation, global average pooling, classifier."""
    if self.unit_order == "full_preact":
      x = act(norm(name="final_bn")(x, train=train))
    elif self.unit_order == "relu_preact":
      x = act(x)
    accum = jnp.promote_types(self.dtype, jnp.float32)  # float32 logits for bf16 nets
    x = jnp.mean(x.astype(accum), axis=(1, 2))
    features["pre_logits"] = x
    part = self._identity_init()
    if self.num_classes == 0:
      out = x
    else:
      if self._scalar_bias() is not None:  # Fixup: a scalar bias before the classifier
        x = self._scalar_bias()(name="head_bias")(x)
      zero = part is not None and part.ZERO_CLASSIFIER
      out = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                     kernel_init=nn.initializers.zeros if zero else layers.head_kernel_init,
                     bias_init=nn.initializers.zeros, name="head")(x)
      out = out.astype(accum)
    if return_features:
      return out, features
    return out


class PlainNet(ResNet):
  """A plain network (He et al. 2015, §4.1): the same stack with no shortcuts."""
  shortcut: str = "none"
