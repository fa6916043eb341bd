"""Pretrained weights in and out: torchvision / timm ResNets <-> resnet_jax variables.

torchvision's ResNet family (and timm's `resnet50.*`, `resnext50_32x4d.*`, ... checkpoints,
which use torchvision's key names) is ours with projection shortcuts (B), the usual
BatchNorm and the bottleneck's stride on the 3×3 ("ResNet v1.5"). Where that stride
differs from the paper's, our name says so: torchvision's `resnet50` is our `resnet50_v1_5`,
while our `resnet50` is He et al.'s network (stride on the first 1×1; same parameter
shapes, another function):

  ours                                               torchvision / timm
  resnet18, resnet34                                 resnet18, resnet34 (timm: resnet18.tv_in1k, ...)
  resnet50_v1_5, resnet101_v1_5, resnet152_v1_5      resnet50, resnet101, resnet152 (timm: *.tv_in1k, *.a1_in1k, ...)
  resnet200_v1_5                                     timm resnet200
  resnext50_32x4d, resnext101_32x8d, resnext101_64x4d  the same names
  wide_resnet50_2, wide_resnet101_2                  the same names
  resnext101_32x4d, resnext101_32x16d, resnet50_gn   timm's, the same names
  resnet18d ... resnet200d, resnet50c, resnext50d_32x4d, seresnet50/101, seresnext50/101_32x4d,
  ecaresnet50d/101d, resnetrs50/101/152/200, resnetblur50, resnetaa50   timm's, the same names
  resnetv2_50x1_bit, resnetv2_101x1_bit, resnetv2_50x3_bit, resnetv2_50  timm's ResNetV2, the same names

>>> import resnet_jax as rj
>>> net = rj.interop.pretrained("resnet50_v1_5", "resnet50.safetensors")       # 1000 classes
>>> logits = net(images_uint8)          # torchvision's ImageNet preprocessing, then the network
>>> model, variables = rj.interop.pretrained("resnet50_v1_5", "resnet50.safetensors", num_classes=10)  # new head
>>> state_dict = rj.interop.to_torchvision(variables, "resnet50_v1_5")   # numpy arrays, torch not needed
>>> net = rj.interop.pretrained("resnet50d.ra2_in1k", "model.safetensors")   # timm's name.tag
>>> state_dict = rj.interop.to_timm(net.variables, "resnet50d")

torchvision's and timm's own names are accepted too, timm's with their tag (`resnet50.a1_in1k`);
an untagged one that names another of our networks ("resnet50") with a `FutureWarning`. A
network with the paper's stride placement is refused: it has no torchvision counterpart; so is
exporting under such a name. Nothing is converted silently: a key set that does not match the
network raises `ConversionError` listing the missing and unexpected keys and the shape mismatches,
and where timm's `config.json` lies beside the weights, a checkpoint of another architecture
(e.g. `resnetblur50` weights, whose keys are `resnet50`'s) is refused.
"""
from __future__ import annotations

import json
import logging
import pathlib
import re
import warnings
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from packaging.version import Version
from safetensors.numpy import load_file as load_safetensors

from resnet_jax import models
from resnet_jax.data.preprocessing import Preprocessing
from resnet_jax.errors import InputError, MissingError
from resnet_jax.models import layers
from resnet_jax.train.trained import TrainedNetwork

_LOG = logging.getLogger(__name__)  # under "resnet_jax": never Python's root logger

# Our registry name -> torchvision's architecture function of the same network.
TORCHVISION = {
    "resnet18": "resnet18", "resnet34": "resnet34", "resnet50_v1_5": "resnet50", "resnet101_v1_5": "resnet101",
    "resnet152_v1_5": "resnet152", "resnext50_32x4d": "resnext50_32x4d", "resnext101_32x8d": "resnext101_32x8d",
    "resnext101_64x4d": "resnext101_64x4d", "wide_resnet50_2": "wide_resnet50_2",
    "wide_resnet101_2": "wide_resnet101_2"}
# Our registry name -> timm's name of the same network (timm's `resnet.py` and `resnetv2.py`).
TIMM = {**TORCHVISION, "resnet200_v1_5": "resnet200", **{name: name for name in (
    "resnext101_32x4d", "resnext101_32x16d", "resnet50_gn", "resnetblur50", "resnetaa50",
    "resnet18d", "resnet34d", "resnet26d", "resnet50d", "resnet101d", "resnet152d", "resnet200d", "resnet50c",
    "resnext50d_32x4d", "seresnet50", "seresnet101", "seresnext50_32x4d", "seresnext101_32x4d",
    "ecaresnet50d", "ecaresnet101d", "resnetrs50", "resnetrs101", "resnetrs152", "resnetrs200",
    "resnetv2_50x1_bit", "resnetv2_101x1_bit", "resnetv2_50x3_bit", "resnetv2_50")}}
_OURS = {theirs: ours for ours, theirs in TIMM.items()}
# BatchNorm keys torchvision has and we do not keep (PyTorch's count of training steps).
IGNORED_SUFFIXES = (".num_batches_tracked",)
# The first torch whose `torch.load(weights_only=True)` cannot be made to run code from the
# file (CVE-2025-32434 affects 2.5.1 and older).
MIN_TORCH_FOR_PTH = Version("2.6")
# timm's file of a checkpoint's architecture, beside its weights on the Hugging Face hub.
TIMM_CONFIG = "config.json"


class SuspiciousWeightsWarning(UserWarning):
  """A weights file holds NaN/Inf values, or integer tensors where weights are floats."""


class ConversionError(InputError):
  """A state dict does not match the network it is converted to or from."""


def split_tag(name: str) -> Tuple[str, Optional[str]]:
  """timm's `architecture.tag` ("resnet50.a1_in1k") -> ("resnet50", "a1_in1k"); no tag: None."""
  arch, dot, tag = name.partition(".")
  return (arch, tag) if dot and tag else (name, None)


def _supported() -> str:
  theirs = sorted(t for o, t in TIMM.items() if t != o)
  return f"{', '.join(TIMM)} (theirs: {', '.join(theirs)}; timm's with a tag too, e.g. resnet50.a1_in1k)"


def our_name(name: str) -> str:
  """Our registry name of the torchvision/timm network `name` names: ours (`TIMM`), or theirs
  where it differs, tagged (`resnet50.a1_in1k`) or with a `FutureWarning` ("resnet50" ->
  "resnet50_v1_5"); `InputError` naming what is supported for any other name."""
  arch, tag = split_tag(name)
  if arch in TIMM:
    return arch
  if arch not in _OURS:
    raise InputError(f"no torchvision equivalent for {name!r}; supported: {_supported()}")
  ours = _OURS[arch]
  if tag is None:
    warnings.warn(f"{name!r} is torchvision's name of our {ours!r} (the bottleneck's stride on the 3×3); "
                  f"rj.models.create({name!r}) is He et al.'s network (stride on the first 1×1), which computes "
                  f"something else with the same parameters: pass {ours!r}", FutureWarning, stacklevel=3)
  return ours


def torchvision_model(name: str, **overrides: Any) -> models.ResNet:
  """Our network of torchvision's or timm's `name` (see `TIMM`; `our_name`)."""
  return models.create(our_name(name), **overrides)


def _v2_layout(model: models.ResNet) -> bool:
  """timm's ResNetV2 key layout (`stages.i.blocks.j`): its pre-activation networks."""
  return model.unit_order == "full_preact"


def _convs_per_unit(model: models.ResNet) -> int:
  return len(model.block_class(features=64).branch(64))  # 2 (basic) or 3 (bottleneck)


def _stem_names(model: models.ResNet) -> Iterator[Tuple[str, str, str]]:
  """timm's stem modules: `conv1` + `bn1`, the deep stem's `conv1.0/.1/.3/.4/.6` + `bn1`,
  ResNet-RS's strided conv in `maxpool.0` + its norm after the anti-aliasing filter if any."""
  if _v2_layout(model):
    yield "stem.conv", "stem_conv", "conv"
    return
  if model.stem == "imagenet":
    yield from (("conv1", "stem_conv", "conv"), ("bn1", "stem_bn", "norm"))
    return
  for index, ours in ((0, "stem_conv1"), (1, "stem_bn1"), (3, "stem_conv2"), (4, "stem_bn2"), (6, "stem_conv3")):
    yield f"conv1.{index}", ours, "conv" if "conv" in ours else "norm"
  yield "bn1", "stem_bn3", "norm"
  if model.stem == "deep_strided":
    yield "maxpool.0", "stem_conv4", "conv"
    yield f"maxpool.{2 if model.anti_alias is not None else 1}", "stem_bn4", "norm"


def _unit_names(model: models.ResNet, theirs: str, ours: str, projects: bool) -> Iterator[Tuple[str, str, str]]:
  """One unit's modules: convolutions and norms, attention (timm's `se`), the projection."""
  v2 = _v2_layout(model)
  for k in range(1, _convs_per_unit(model) + 1):
    yield f"{theirs}.conv{k}", f"{ours}/conv{k}", "conv"
    yield f"{theirs}.{'norm' if v2 else 'bn'}{k}", f"{ours}/bn{k}", "norm"
  if model.attention == "se":
    yield f"{theirs}.se.fc1", f"{ours}/attention/reduce", "fc_conv"
    yield f"{theirs}.se.fc2", f"{ours}/attention/expand", "fc_conv"
  elif model.attention == "eca":
    yield f"{theirs}.se.conv", f"{ours}/attention/conv", "conv1d"
  if projects and v2:
    yield f"{theirs}.downsample.conv", f"{ours}/shortcut/projection_conv", "conv"
  elif projects:
    first = 1 if (model.shortcut_options or {}).get("avg_down") else 0  # ResNet-D: the pool is .0
    yield f"{theirs}.downsample.{first}", f"{ours}/shortcut/projection_conv", "conv"
    yield f"{theirs}.downsample.{first + 1}", f"{ours}/shortcut/projection_bn", "norm"


def _names(model: models.ResNet) -> Iterator[Tuple[str, str, str]]:
  """(timm/torchvision module, our module path, kind) for every layer with weights;
  kind: conv | norm | fc | fc_conv (a 1×1 convolution with bias, our Dense) | conv1d."""
  yield from _stem_names(model)
  v2 = _v2_layout(model)
  for stage, units in enumerate(model.stage_sizes):
    for unit in range(units):
      theirs = f"stages.{stage}.blocks.{unit}" if v2 else f"layer{stage + 1}.{unit}"
      yield from _unit_names(model, theirs, f"stage{stage + 1}_unit{unit + 1}",
                             unit == 0 and _has_projection(model, stage))
  if v2:
    yield "norm", "final_bn", "norm"
  if model.num_classes:
    yield ("head.fc", "head", "fc_conv") if v2 else ("fc", "head", "fc")


def _head_key(model: models.ResNet) -> str:
  return "head.fc.weight" if _v2_layout(model) else "fc.weight"


def _has_projection(model: models.ResNet, stage: int) -> bool:
  in_features = model.stem_width if stage == 0 else model.unit_features(stage - 1)[0]
  return model.strides_of(stage) != 1 or in_features != model.unit_features(stage)[0]


def _check_supported(model: models.ResNet, name: str) -> None:
  """`ConversionError` for a network that no timm/torchvision layout holds."""
  v2 = _v2_layout(model)
  stems = ("preact", "bit") if v2 else ("imagenet", "deep", "deep_strided")
  options = dict(model.shortcut_options or {})
  if (model.shortcut != "B" or model.unit_order not in ("original", "full_preact") or model.stem not in stems
      or model.norm not in ("batch", "group") or set(options) - {"avg_down"} or (v2 and options)):
    raise ConversionError(f"{name}: torchvision's ResNet has projection (B) shortcuts, the original unit "
                          "order, the ImageNet stem and BatchNorm; this network differs (timm's also: ResNet-C/D "
                          "stems and shortcuts, GroupNorm, SE/ECA; ResNetV2: pre-activation with its stems)")
  if model.unit_features(0)[1] is not None and model.stride_on != "conv3x3":
    raise ConversionError(f"{name}: torchvision's bottleneck ResNets have the stride on the 3×3 "
                          f"(our resnet50_v1_5, ...); this network has stride_on={model.stride_on!r} (He et al.'s "
                          "resnet50): the same parameter shapes would compute another function")
  if model.attention not in (None, "se", "eca") or (v2 and model.attention is not None):
    raise ConversionError(f"{name}: attention={model.attention!r} has no timm layout here (timm's ResNets: "
                          "None, 'se', 'eca'; its ResNetV2: None)")


def _norm_keys(model: models.ResNet, module: str, ours: str) -> Dict[str, Tuple[str, str, str]]:
  """A norm's tensors: BatchNorm's four (weight, bias, running mean and variance), GroupNorm's two."""
  out = {f"{module}.weight": ("params", f"{ours}/scale", "vector"),
         f"{module}.bias": ("params", f"{ours}/bias", "vector")}
  if model.norm == "batch":
    out[f"{module}.running_mean"] = ("batch_stats", f"{ours}/mean", "vector")
    out[f"{module}.running_var"] = ("batch_stats", f"{ours}/var", "vector")
  return out


def _leaf_map(model: models.ResNet, name: str) -> Dict[str, Tuple[str, str, str]]:
  """timm/torchvision key -> (collection, our path, layout) for every tensor of the network."""
  _check_supported(model, name)
  out = {}
  for theirs, ours, kind in _names(model):
    if kind == "norm":
      out.update(_norm_keys(model, theirs, ours))
      continue
    layout = {"conv": "conv", "fc": "dense", "fc_conv": "dense_conv", "conv1d": "conv1d"}[kind]
    out[f"{theirs}.weight"] = ("params", f"{ours}/kernel", layout)
    if kind in ("fc", "fc_conv"):
      out[f"{theirs}.bias"] = ("params", f"{ours}/bias", "vector")
  return out


def _numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor, without importing torch
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def _to_ours(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "conv":
    return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if layout == "dense":
    return array.T                      # [out, in] -> [in, out]
  if layout == "dense_conv":
    return array[:, :, 0, 0].T          # a 1×1 convolution [out, in, 1, 1] -> [in, out]
  if layout == "conv1d":
    return array.transpose(2, 1, 0)     # [out, in, k] -> [k, in, out]
  return array


def _to_torch(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "conv":
    return array.transpose(3, 2, 0, 1)
  if layout == "dense":
    return array.T
  if layout == "dense_conv":
    return array.T[:, :, None, None]
  if layout == "conv1d":
    return array.transpose(2, 1, 0)
  return array


def _set(tree: Dict[str, Any], path: str, value: Any) -> None:
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def _get(tree: Mapping[str, Any], path: str) -> Any:
  for p in path.split("/"):
    tree = tree[p]
  return tree


def _first(items, n: int = 5) -> str:
  items = sorted(items)
  return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _abstract(model: models.ResNet) -> Dict[str, Any]:
  # Parameter shapes do not depend on the image size: a small one traces faster.
  return models.abstract_variables(model, (1, 64, 64, 3))


def state_shapes(model: models.ResNet, name: str) -> Dict[str, Tuple[int, ...]]:
  """timm's/torchvision's key -> tensor shape for our `model` (`num_batches_tracked` left out):
  what `to_timm` writes and `from_timm` reads. Shapes only: like `models.size`, it traces at most
  two units per stage (the later ones repeat the second), so it takes a second for any depth."""
  traced = model.clone(stage_sizes=tuple(min(n, 2) for n in model.stage_sizes))
  abstract = _abstract(traced)

  def shape_of(collection: str, path: str) -> Tuple[int, ...]:
    unit, _, rest = path.partition("/")
    match = re.fullmatch(r"(stage\d+)_unit(\d+)", unit)
    if match and int(match[2]) > 2:
      path = f"{match[1]}_unit2/{rest}"
    return tuple(_get(abstract[collection], path).shape)

  return {key: _to_torch(np.broadcast_to(np.float32(0), shape_of(collection, path)), layout).shape
          for key, (collection, path, layout) in _leaf_map(model, name).items()}


def _mismatch(wanted: Mapping[str, Any], keys: Mapping[str, Any], abstract: Mapping[str, Any]
              ) -> Tuple[list, Dict[str, Any]]:
  """(what is wrong, as parts of one message; the converted variables)."""
  shapes = []
  variables: Dict[str, Any] = {"params": {}, "batch_stats": {}}
  for key in sorted(set(wanted) & set(keys)):
    collection, path, layout = wanted[key]
    array = _to_ours(_numpy(keys[key]), layout)
    expected = tuple(_get(abstract[collection], path).shape)
    if array.shape != expected:
      shapes.append(f"{key} {tuple(_numpy(keys[key]).shape)} (ours {path} {expected})")
      continue
    _set(variables[collection], path, jnp.asarray(array, _get(abstract[collection], path).dtype))
  missing, unexpected = set(wanted) - set(keys), set(keys) - set(wanted)
  parts = [f"{len(missing)} missing: {_first(missing)}"] if missing else []
  parts += [f"{len(unexpected)} unexpected: {_first(unexpected)}"] if unexpected else []
  parts += [f"{len(shapes)} of another shape: {_first(shapes, 3)}"] if shapes else []
  return parts, variables


def from_timm(state_dict: Mapping[str, Any], name: str, num_classes: Optional[int] = None,
              **overrides: Any) -> Dict[str, Any]:
  """timm/torchvision state dict -> our `{"params", "batch_stats"}` of `torchvision_model(name)`.

  `name`: ours or theirs (`our_name`; timm's with a tag too). `state_dict` maps names to
  arrays (numpy, or torch tensors: torch is not imported). `num_classes` None keeps the
  checkpoint's classifier; another number drops it (`fc.*` is not converted) so the caller
  initialises a new head. `pretrained` gives the network with its variables and preprocessing.
  """
  name = our_name(name)
  keys = {k: v for k, v in state_dict.items() if not k.endswith(IGNORED_SUFFIXES)}
  head = _head_key(models.create(name, **overrides))
  ckpt_classes = int(_numpy(keys[head]).shape[0]) if head in keys else 0
  drop_head = num_classes is not None and num_classes != ckpt_classes
  model = models.create(name, num_classes=0 if drop_head else ckpt_classes, **overrides)
  wanted = _leaf_map(model, name)
  if drop_head:
    keys = {k: v for k, v in keys.items() if not k.startswith(head.rsplit(".", 1)[0] + ".")}
  parts, variables = _mismatch(wanted, keys, _abstract(model))
  if parts:
    raise ConversionError(f"the state dict is not torchvision's {name} "
                          f"({TIMM[name]}, {ckpt_classes} classes): " + "; ".join(parts))
  return variables


from_torchvision = from_timm  # one converter: torchvision's key names are timm's for its networks


def _export_name(name: Optional[str], function: str) -> str:
  """Our name of the network whose variables `function` exports, refusing a name that means
  another of ours (torchvision's "resnet50" is our resnet50_v1_5; our resnet50 has no counterpart)."""
  if name is None:
    raise InputError(f"{function}(variables, name): name the network, e.g. 'resnet50_v1_5'")
  arch, tag = split_tag(name)
  if tag is None and arch in _OURS and arch not in TIMM and arch in models.names():
    ours = _OURS[arch]
    raise ConversionError(f"{function}(variables, {name!r}): our {arch!r} is He et al.'s network (stride on the "
                          f"first 1×1), which torchvision and timm do not have; their {arch!r} is our {ours!r}: "
                          f"pass {ours!r} if the variables are of that network")
  return our_name(name)


def to_timm(variables: Mapping[str, Any] | TrainedNetwork, name: Optional[str] = None,
            **overrides: Any) -> Dict[str, np.ndarray]:
  """Our `{"params", "batch_stats"}` of network `name` -> timm's (or torchvision's) state dict
  of numpy arrays (`torch.from_numpy` each, or save with safetensors); `num_batches_tracked` is 0.

  Given a `TrainedNetwork`, its own network is converted (`name` and `overrides` are not
  needed), and refused when timm has no such network (e.g. the paper's `resnet50`).
  """
  if isinstance(variables, TrainedNetwork):
    model, name, variables = variables.model, variables.name, variables.variables
  else:
    name = _export_name(name, "to_timm")
    params = variables["params"]
    num_classes = int(np.shape(params["head"]["kernel"])[1]) if "head" in params else 0
    model = models.create(name, **{"num_classes": num_classes, **overrides})
  out = {}
  for key, (collection, path, layout) in _leaf_map(model, name).items():
    try:
      out[key] = np.ascontiguousarray(_to_torch(np.asarray(_get(variables[collection], path)), layout))
    except KeyError:
      raise ConversionError(f"{name}: the variables have no {collection}/{path} (for {key})") from None
    if key.endswith(".running_var"):
      out[key.replace(".running_var", ".num_batches_tracked")] = np.zeros((), np.int64)
  return out


def to_torchvision(variables: Mapping[str, Any] | TrainedNetwork, name: Optional[str] = None,
                   **overrides: Any) -> Dict[str, np.ndarray]:
  """`to_timm` for the networks torchvision has (`TORCHVISION`): its state dict, its key names."""
  ours = variables.name if isinstance(variables, TrainedNetwork) else _export_name(name, "to_torchvision")
  if ours not in TORCHVISION and ours in TIMM:
    raise ConversionError(f"to_torchvision: torchvision has no {ours!r} (timm has: use rj.interop.to_timm)")
  return to_timm(variables, name, **overrides)


def read(path: str | pathlib.Path) -> Dict[str, Any]:
  """The state dict of a torchvision/timm checkpoint file.

  `.safetensors` (what timm and the model hubs publish) and `.npz` need no torch;
  `.pth` / `.pt` need torch (`pip install 'resnetax[torch]'`).
  """
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise MissingError(f"no checkpoint file {path}")
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    state_dict = load_safetensors(str(path))
  elif suffix == ".npz":
    with np.load(path) as f:
      state_dict = {k: f[k] for k in f.files}
  elif suffix in (".pth", ".pt", ".bin"):
    torch = _torch_for_pth(path)
    state_dict = torch.load(str(path), map_location="cpu", weights_only=True)
    state_dict = state_dict.get("state_dict", state_dict) if isinstance(state_dict, dict) else state_dict
  else:
    raise InputError(f"unknown checkpoint format {path.suffix!r} of {path}; valid: .safetensors, .npz, .pth, .pt")
  state_dict = {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}  # DataParallel prefixes
  _warn_suspicious(path, state_dict)
  return state_dict


def _torch_for_pth(path: pathlib.Path) -> Any:
  """torch, when installed at a version whose `weights_only=True` loading is safe (one-line errors)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional, and seconds to import)
  except ImportError:
    raise ImportError(f"reading {path.name} needs PyTorch: pip install 'resnetax[torch]' (or convert "
                      "it to .safetensors, which needs no torch)") from None
  if Version(torch.__version__) < MIN_TORCH_FOR_PTH:
    raise ImportError(f"reading {path.name} needs torch >= {MIN_TORCH_FOR_PTH}, found {torch.__version__}: older "
                      "torch.load can run code from the file even with weights_only=True (CVE-2025-32434); "
                      "pip install -U 'resnetax[torch]', or convert the file to .safetensors elsewhere")
  return torch


def _warn_suspicious(path: pathlib.Path, state_dict: Mapping[str, Any]) -> None:
  """Warns, naming the tensors, about NaN/Inf values and integer tensors (weights are floats)."""
  nonfinite, integer = [], []
  for key, value in state_dict.items():
    if key.endswith(IGNORED_SUFFIXES):
      continue
    array = _numpy(value)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
      nonfinite.append(key)
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
      integer.append(f"{key} ({array.dtype})")
  if nonfinite:
    warnings.warn(f"{path}: NaN/Inf values in {len(nonfinite)} tensors: {_first(nonfinite)}",
                  SuspiciousWeightsWarning, stacklevel=3)
  if integer:
    warnings.warn(f"{path}: integer tensors where weights are floats (converted as they are): {_first(integer)}",
                  SuspiciousWeightsWarning, stacklevel=3)


def checkpoint_architecture(path: str | pathlib.Path) -> Optional[str]:
  """The architecture timm's `config.json` beside the checkpoint file `path` names (as the
  Hugging Face hub stores timm's weights), or None where there is no such file."""
  config = pathlib.Path(path).expanduser().parent / TIMM_CONFIG
  try:
    value = json.loads(config.read_text())
  except (OSError, ValueError):  # none, or not timm's
    return None
  arch = value.get("architecture") if isinstance(value, dict) else None
  return arch if isinstance(arch, str) else None


def _check_architecture(path: str | pathlib.Path, name: str) -> None:
  """`ConversionError` where the checkpoint says it is another network than `name` (ours)."""
  arch = checkpoint_architecture(path)
  if arch is None:
    return
  theirs = split_tag(arch)[0]
  if theirs not in TIMM and theirs not in _OURS:
    raise ConversionError(f"{path}: its {TIMM_CONFIG} says timm's {arch!r}, which we do not have; "
                          f"supported: {_supported()}")
  ours = theirs if theirs in TIMM else _OURS[theirs]
  if ours != name:
    raise ConversionError(f"{path}: its {TIMM_CONFIG} says timm's {arch!r} (our {ours!r}), not {name!r}: the "
                          f"same keys may compute another function; pass {ours!r}")


def load(path: str | pathlib.Path, name: str, num_classes: Optional[int] = None,
         **overrides: Any) -> Dict[str, Any]:
  """Reads a torchvision/timm checkpoint file (`read`) and converts it (`from_timm`), refusing
  one whose timm `config.json` names another architecture."""
  ours = our_name(name)
  _check_architecture(path, ours)
  return from_timm(read(path), ours, num_classes=num_classes, **overrides)


def pretrained(name: str, path: str | pathlib.Path | Mapping[str, Any], num_classes: Optional[int] = None,
               seed: int = 0, preprocessing: Optional[Preprocessing] = None, **overrides: Any) -> TrainedNetwork:
  """The network of torchvision's or timm's `name` (`resnet50d.ra2_in1k`: timm's name.tag) with the
  weights of `path` (a checkpoint file, or a state dict in memory) and its input preprocessing;
  unpacks as `model, variables = ...`. A file whose timm `config.json` names another
  architecture is refused.

  `num_classes`: None keeps the checkpoint's classifier; 0 gives the headless backbone
  (pooled features); another number replaces the classifier with a new one initialised
  from `seed` (fine-tuning), and says so in the log. `preprocessing`: torchvision's ImageNet
  evaluation by default (`Preprocessing.imagenet()`: shorter side 256, center 224, ImageNet
  mean/std); give the checkpoint's own where it differs (timm's `pretrained_cfg`, e.g.
  `Preprocessing.imagenet(224, 235, "bicubic")` for crop_pct 0.95).
  """
  name = our_name(name)
  from_file = not isinstance(path, Mapping)
  if from_file:
    _check_architecture(path, name)
  state_dict = read(path) if from_file else path
  variables = from_timm(state_dict, name, num_classes=num_classes, **overrides)
  has_head = "head" in variables["params"]
  ckpt_classes = int(variables["params"]["head"]["kernel"].shape[1]) if has_head else None
  classes = ckpt_classes if num_classes is None else num_classes
  model = models.create(name, num_classes=classes or 0, **overrides)
  if classes and not has_head:
    # The network's own classifier initialisation (layers.head_kernel_init, zero bias).
    features = model.unit_features(len(model.stage_sizes) - 1)[0]
    head = nn.Dense(classes, kernel_init=layers.head_kernel_init, bias_init=nn.initializers.zeros,
                    param_dtype=model.param_dtype)
    variables["params"]["head"] = head.init(jax.random.key(seed), jnp.zeros((1, features)))["params"]
    _LOG.warning("%s: the checkpoint's classifier was dropped; a new %d-class head is initialised "
                    "(seed %d)", name, classes, seed)
  source = str(pathlib.Path(path).expanduser()) if from_file else "a state dict"
  return TrainedNetwork(model, variables, preprocessing or Preprocessing.imagenet(), name=name, source=source)
