"""Named networks of the three papers and of their 2018–2021 successors, as ``ResNet`` field tables.

``create(name, **overrides)`` builds one; any ``ResNet`` field can be overridden,
e.g. ``create("cifar_resnet110", shortcut="gate")``. An option mapping
(``shortcut_options``, ``norm_options``, ``attention_options``) given alone updates the named
network's (``create("resnetv2_50x1_bit", norm_options={"num_groups": 8})`` keeps its
epsilon); given with its part (``shortcut=``, ``norm=``, ``attention=``) of another name, it
replaces them, since they were the named part's.

The networks after 2017 carry timm's names and compute timm's functions (checked against
timm itself, ``tests/test_timm_equivalence.py``).
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

from resnet_jax.errors import InputError
from resnet_jax.models.resnet import ResNet

_REGISTRY: dict[str, dict[str, Any]] = {}


def register(name: str, **fields: Any) -> None:
  """Registers a named network as a table of ``ResNet`` fields."""
  _check_fields(fields, context=f"network {name!r}")
  _REGISTRY[name] = dict(fields)


def names() -> list[str]:
  """Every registered network name, sorted."""
  return sorted(_REGISTRY)


def config(name: str) -> dict[str, Any]:
  """The ``ResNet`` fields of a named network."""
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, _REGISTRY, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise InputError(f"unknown model {name!r}{hint}; valid names: {', '.join(names())}")
  return dict(_REGISTRY[name])


# Each option mapping and the part whose options it holds.
OPTIONS_OF = {"shortcut_options": "shortcut", "norm_options": "norm", "attention_options": "attention",
              "identity_init_options": "identity_init"}


def create(name: str, **overrides: Any) -> ResNet:
  """Builds the named network, with any ``ResNet`` field overridden (option mappings: see above)."""
  fields = config(name)
  _check_fields(overrides, context=f"create({name!r})")
  for options, part in OPTIONS_OF.items():
    if part in overrides and overrides[part] != fields.get(part):
      fields.pop(options, None)  # the named part's options, not the new part's
    elif isinstance(overrides.get(options), Mapping) and fields.get(options):
      overrides = {**overrides, options: {**fields[options], **overrides[options]}}
  fields.update(overrides)
  return ResNet(**fields)


def field_names() -> list[str]:
  return sorted(f.name for f in dataclasses.fields(ResNet) if f.name not in ("parent", "name"))


def _check_fields(fields: Mapping[str, Any], context: str) -> None:
  valid = field_names()
  for key in fields:
    if key not in valid:
      close = difflib.get_close_matches(key, valid, n=3)
      hint = f" (did you mean {', '.join(close)}?)" if close else ""
      raise InputError(f"{context}: unknown model field {key!r}{hint}; valid fields: {', '.join(valid)}")


# He et al. 2015, §4.2: CIFAR-10 networks of 6n+2 layers, 16/32/64 filters, option A.
_CIFAR = dict(block="basic", stem="cifar", stem_width=16, stage_widths=(16, 32, 64), num_classes=10,
              shortcut="A")
for _depth in (20, 32, 44, 56, 110, 1202):
  _n = (_depth - 2) // 6
  register(f"cifar_resnet{_depth}", stage_sizes=(_n, _n, _n), **_CIFAR)
for _depth in (20, 32, 44, 56):
  _n = (_depth - 2) // 6
  register(f"cifar_plain{_depth}", stage_sizes=(_n, _n, _n), **dict(_CIFAR, shortcut="none"))

# Zhang, Dauphin & Ma 2019 (Fixup, §3 and Table 2; the authors' fixup_resnet_cifar.py): the CIFAR
# ResNets without normalisation, option A shortcuts, Fixup's initialisation, multipliers and biases.
for _depth in (20, 32, 44, 56, 110, 1202):
  _n = (_depth - 2) // 6
  register(f"cifar_fixup_resnet{_depth}", stage_sizes=(_n, _n, _n), norm="none", identity_init="fixup", **_CIFAR)

# He et al. 2016 ("Identity Mappings"): pre-activation ResNet-110 (basic units, as
# the ResNet-110 it is compared with) and the 9n+2 bottleneck ResNet-164/1001
# (appendix; projection shortcuts where dimensions increase, stride on the first 1×1).
register("cifar_preact_resnet110", stage_sizes=(18, 18, 18), unit_order="full_preact", **_CIFAR)
for _depth in (164, 1001):
  _n = (_depth - 2) // 9
  register(f"cifar_preact_resnet{_depth}", stage_sizes=(_n, _n, _n), block="bottleneck", stem="cifar",
           stem_width=16, stage_widths=(16, 32, 64), num_classes=10, shortcut="B",
           unit_order="full_preact", stride_on="conv1x1")

# Xie et al. 2017, §5.3 / appendix A: ResNeXt-29 on CIFAR (3 stages × 3 units, 64-wide stem,
# template [1×1,64; 3×3,64; 1×1,256] with C·d channels in the grouped 3×3).
for _c in (8, 16):
  register(f"resnext29_{_c}x64d", stage_sizes=(3, 3, 3), block="bottleneck", stem="cifar", stem_width=64,
           stage_widths=(64, 128, 256), num_classes=10, cardinality=_c, bottleneck_width=64,
           stride_on="conv3x3", shortcut="B")

# He et al. 2015, Table 1: ImageNet networks (option B; stride on the first 1×1 as in the paper).
# torchvision's and timm's "resnet50" put the bottleneck's stride on the 3×3 ("v1.5"): the same
# parameter shapes but another function, so it has its own name here, `resnet50_v1_5`.
_IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
for _depth, (_block, _sizes) in _IMAGENET_DEPTHS.items():
  register(f"resnet{_depth}", block=_block, stage_sizes=_sizes, shortcut="B")
  register(f"preact_resnet{_depth}", block=_block, stage_sizes=_sizes, shortcut="B",
           unit_order="full_preact")
  if _block == "bottleneck":
    register(f"resnet{_depth}_v1_5", block=_block, stage_sizes=_sizes, shortcut="B", stride_on="conv3x3")
for _depth in (18, 34):
  register(f"plain{_depth}", block="basic", stage_sizes=_IMAGENET_DEPTHS[_depth][1], shortcut="none")

# Xie et al. 2017, Tables 1, 3, 4: ResNeXt C×d (stride on the grouped 3×3).
for _depth, _c, _d in ((50, 32, 4), (101, 32, 4), (101, 64, 4), (101, 32, 8)):
  register(f"resnext{_depth}_{_c}x{_d}d", block="bottleneck", stage_sizes=_IMAGENET_DEPTHS[_depth][1],
           cardinality=_c, bottleneck_width=_d, stride_on="conv3x3", shortcut="B")

# Wide ResNet-50/101-2 (torchvision's layout: bottleneck width doubled, stride on the 3×3).
for _depth in (50, 101):
  register(f"wide_resnet{_depth}_2", block="bottleneck", stage_sizes=_IMAGENET_DEPTHS[_depth][1],
           width_multiplier=2.0, stride_on="conv3x3", shortcut="B")

# timm (resnet.py) / torchvision layouts that timm's checkpoints need: ResNeXt-101 32×16d (Mahajan
# et al. 2018, the weakly supervised Instagram models), GroupNorm ResNet-50 (Wu & He 2018,
# timm's GroupNorm has PyTorch's epsilon 1e-5), anti-aliased ResNet-50s (Zhang 2019).
register("resnext101_32x16d", block="bottleneck", stage_sizes=_IMAGENET_DEPTHS[101][1], cardinality=32,
         bottleneck_width=16, stride_on="conv3x3", shortcut="B")
register("resnet50_gn", block="bottleneck", stage_sizes=_IMAGENET_DEPTHS[50][1], stride_on="conv3x3",
         shortcut="B", norm="group", norm_options={"epsilon": 1e-5})
for _name, _filter in (("resnetblur50", "blur"), ("resnetaa50", "avg")):
  register(_name, block="bottleneck", stage_sizes=_IMAGENET_DEPTHS[50][1], stride_on="conv3x3", shortcut="B",
           anti_alias=_filter)

# He et al. 2019 ("Bag of Tricks", §4): ResNet-B is our v1.5 (stride on the 3×3); ResNet-C the deep
# stem (three 3×3 convolutions); ResNet-D also average-pools before each strided projection.
# timm's names; its `stem_width=32` is the deep stem's inner width, our output width 64 / 2.
_V1_5 = dict(stride_on="conv3x3", shortcut="B")
_C = dict(_V1_5, stem="deep")
_D = dict(_C, shortcut_options={"avg_down": True})
_26_DEEP = {26: ("bottleneck", (2, 2, 2, 2))}
for _depth, (_block, _sizes) in {**_IMAGENET_DEPTHS, **_26_DEEP}.items():
  register(f"resnet{_depth}d", block=_block, stage_sizes=_sizes, **_D)
register("resnet50c", block="bottleneck", stage_sizes=_IMAGENET_DEPTHS[50][1], **_C)
register("resnext50d_32x4d", block="bottleneck", stage_sizes=_IMAGENET_DEPTHS[50][1], cardinality=32,
         bottleneck_width=4, **_D)

# Hu et al. 2018 (Squeeze-and-Excitation, r = 16) on timm's v1.5 ResNet / ResNeXt; Wang et al. 2020
# (ECA) on ResNet-D.
for _depth in (50, 101):
  _sizes = _IMAGENET_DEPTHS[_depth][1]
  register(f"seresnet{_depth}", block="bottleneck", stage_sizes=_sizes, attention="se", **_V1_5)
  register(f"seresnext{_depth}_32x4d", block="bottleneck", stage_sizes=_sizes, cardinality=32,
           bottleneck_width=4, attention="se", **_V1_5)
  register(f"ecaresnet{_depth}d", block="bottleneck", stage_sizes=_sizes, attention="eca", **_D)

# Bello et al. 2021 (ResNet-RS, §4.1 and Table 6, as timm builds them): ResNet-D whose stem's
# max-pool is a stride-2 3×3 convolution, and SE with ratio 0.25 in every unit.
_RS_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
for _depth, _sizes in _RS_DEPTHS.items():
  register(f"resnetrs{_depth}", block="bottleneck", stage_sizes=_sizes,
           **dict(_D, stem="deep_strided"), attention="se", attention_options={"ratio": 0.25})

# Kolesnikov et al. 2020 (BiT, §3.1; timm's resnetv2_*_bit): pre-activation bottlenecks (stride on
# the 3×3) with GroupNorm (32 groups) and weight-standardised convolutions, a root block without
# norm, widths × the width factor; and timm's BatchNorm pre-activation `resnetv2_50`.
_PREACT_V2 = dict(block="bottleneck", unit_order="full_preact", shortcut="B", stride_on="conv3x3")
for _depth, _factor in ((50, 1), (101, 1), (50, 3)):
  register(f"resnetv2_{_depth}x{_factor}_bit", stage_sizes=_IMAGENET_DEPTHS[_depth][1], stem="bit",
           stem_width=64 * _factor, stage_widths=tuple(64 * _factor * 2 ** i for i in range(4)),
           norm="group", norm_options={"epsilon": 1e-5}, conv="weight_standardized", **_PREACT_V2)
register("resnetv2_50", stage_sizes=_IMAGENET_DEPTHS[50][1], stem="preact", **_PREACT_V2)
