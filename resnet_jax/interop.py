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
  resnext50_32x4d, resnext101_32x8d, resnext101_64x4d  the same names
  wide_resnet50_2, wide_resnet101_2                  the same names

>>> import resnet_jax as rj
>>> net = rj.interop.pretrained("resnet50_v1_5", "resnet50.safetensors")       # 1000 classes
>>> logits = net(images_uint8)          # torchvision's ImageNet preprocessing, then the network
>>> model, variables = rj.interop.pretrained("resnet50_v1_5", "resnet50.safetensors", num_classes=10)  # new head
>>> state_dict = rj.interop.to_torchvision(variables, "resnet50_v1_5")   # numpy arrays, torch not needed

torchvision's own names are accepted too, with a `FutureWarning` where they name another of
our networks ("resnet50"). A network with the paper's stride placement is refused: it has no
torchvision counterpart. Nothing is converted silently: a key set that does not match the
network raises `ConversionError` listing the missing and unexpected keys and the shape mismatches.
"""
from __future__ import annotations

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

from resnet_jax import errors
from resnet_jax import models
from resnet_jax.data.preprocessing import Preprocessing
from resnet_jax.models import layers
from resnet_jax.train.trained import TrainedNetwork

_LOG = logging.getLogger(__name__)  # under "resnet_jax": never Python's root logger

# Our registry name -> torchvision's architecture function of the same network.
TORCHVISION = {
    "resnet18": "resnet18", "resnet34": "resnet34", "resnet50_v1_5": "resnet50", "resnet101_v1_5": "resnet101",
    "resnet152_v1_5": "resnet152", "resnext50_32x4d": "resnext50_32x4d", "resnext101_32x8d": "resnext101_32x8d",
    "resnext101_64x4d": "resnext101_64x4d", "wide_resnet50_2": "wide_resnet50_2",
    "wide_resnet101_2": "wide_resnet101_2"}
_OURS = {tv: ours for ours, tv in TORCHVISION.items()}
# BatchNorm keys torchvision has and we do not keep (PyTorch's count of training steps).
IGNORED_SUFFIXES = (".num_batches_tracked",)
# The first torch whose `torch.load(weights_only=True)` cannot be made to run code from the
# file (CVE-2025-32434 affects 2.5.1 and older).
MIN_TORCH_FOR_PTH = Version("2.6")


class SuspiciousWeightsWarning(UserWarning):
  """A weights file holds NaN/Inf values, or integer tensors where weights are floats."""


class ConversionError(errors.InputError):
  """A state dict does not match the network it is converted to or from."""


def our_name(name: str) -> str:
  """Our registry name of the torchvision network `name` names: ours (`TORCHVISION`), or
  torchvision's own where it differs, with a `FutureWarning` ("resnet50" -> "resnet50_v1_5")."""
  if name in TORCHVISION:
    return name
  if name not in _OURS:
    raise errors.InputError(f"no torchvision equivalent for {name!r}; supported: {', '.join(TORCHVISION)}")
  ours = _OURS[name]
  warnings.warn(f"{name!r} is torchvision's name of our {ours!r} (the bottleneck's stride on the 3×3); "
                f"rj.models.create({name!r}) is He et al.'s network (stride on the first 1×1), which computes "
                f"something else with the same parameters: pass {ours!r}", FutureWarning, stacklevel=3)
  return ours


def torchvision_model(name: str, **overrides: Any) -> models.ResNet:
  """Our network of torchvision's `name` (see `TORCHVISION`; `our_name`)."""
  return models.create(our_name(name), **overrides)


def _names(model: models.ResNet) -> Iterator[Tuple[str, str, str]]:
  """(torchvision module, our module path, kind) for every layer with weights; kind: conv | bn | fc."""
  yield "conv1", "stem_conv", "conv"
  yield "bn1", "stem_bn", "bn"
  convs = len(model.block_class(features=64).branch(64))  # 2 (basic) or 3 (bottleneck)
  for stage, units in enumerate(model.stage_sizes):
    for unit in range(units):
      tv, ours = f"layer{stage + 1}.{unit}", f"stage{stage + 1}_unit{unit + 1}"
      for k in range(1, convs + 1):
        yield f"{tv}.conv{k}", f"{ours}/conv{k}", "conv"
        yield f"{tv}.bn{k}", f"{ours}/bn{k}", "bn"
      if unit == 0 and _has_projection(model, stage):
        yield f"{tv}.downsample.0", f"{ours}/shortcut/projection_conv", "conv"
        yield f"{tv}.downsample.1", f"{ours}/shortcut/projection_bn", "bn"
  if model.num_classes:
    yield "fc", "head", "fc"


def _has_projection(model: models.ResNet, stage: int) -> bool:
  in_features = model.stem_width if stage == 0 else model.unit_features(stage - 1)[0]
  return model.strides_of(stage) != 1 or in_features != model.unit_features(stage)[0]


def _check_supported(model: models.ResNet, name: str) -> None:
  if model.shortcut != "B" or model.unit_order != "original" or model.stem != "imagenet" or model.norm != "batch":
    raise ConversionError(f"{name}: torchvision's ResNet has projection (B) shortcuts, the original unit "
                          "order, the ImageNet stem and BatchNorm; this network differs")
  if model.unit_features(0)[1] is not None and model.stride_on != "conv3x3":
    raise ConversionError(f"{name}: torchvision's bottleneck ResNets have the stride on the 3×3 "
                          f"(our resnet50_v1_5, ...); this network has stride_on={model.stride_on!r} (He et al.'s "
                          "resnet50): the same parameter shapes would compute another function")


def _leaf_map(model: models.ResNet, name: str) -> Dict[str, Tuple[str, str, str]]:
  """torchvision key -> (collection, our path, layout) for every tensor of the network."""
  _check_supported(model, name)
  out = {}
  for tv, ours, kind in _names(model):
    if kind == "conv":
      out[f"{tv}.weight"] = ("params", f"{ours}/kernel", "conv")
    elif kind == "bn":
      out[f"{tv}.weight"] = ("params", f"{ours}/scale", "vector")
      out[f"{tv}.bias"] = ("params", f"{ours}/bias", "vector")
      out[f"{tv}.running_mean"] = ("batch_stats", f"{ours}/mean", "vector")
      out[f"{tv}.running_var"] = ("batch_stats", f"{ours}/var", "vector")
    else:
      out[f"{tv}.weight"] = ("params", f"{ours}/kernel", "dense")
      out[f"{tv}.bias"] = ("params", f"{ours}/bias", "vector")
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
  return array


def _to_torch(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "conv":
    return array.transpose(3, 2, 0, 1)
  if layout == "dense":
    return array.T
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
  return models.abstract_variables(model, (1, 224, 224, 3))


def from_torchvision(state_dict: Mapping[str, Any], name: str, num_classes: Optional[int] = None,
                     **overrides: Any) -> Dict[str, Any]:
  """torchvision/timm state dict -> our `{"params", "batch_stats"}` of `torchvision_model(name)`.

  `state_dict` maps names to arrays (numpy, or torch tensors: torch is not imported).
  `num_classes` None keeps the checkpoint's classifier; another number drops it (`fc.*` is
  not converted) so the caller initialises a new head. `pretrained` gives the network with
  its variables and preprocessing.
  """
  name = our_name(name)
  keys = {k: v for k, v in state_dict.items() if not k.endswith(IGNORED_SUFFIXES)}
  ckpt_classes = int(_numpy(keys["fc.weight"]).shape[0]) if "fc.weight" in keys else 0
  drop_head = num_classes is not None and num_classes != ckpt_classes
  model = models.create(name, num_classes=0 if drop_head else ckpt_classes, **overrides)
  wanted = _leaf_map(model, name)
  if drop_head:
    keys = {k: v for k, v in keys.items() if not k.startswith("fc.")}
  missing = set(wanted) - set(keys)
  unexpected = set(keys) - set(wanted)
  abstract = _abstract(model)
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
  if missing or unexpected or shapes:
    parts = [f"{len(missing)} missing: {_first(missing)}"] if missing else []
    parts += [f"{len(unexpected)} unexpected: {_first(unexpected)}"] if unexpected else []
    parts += [f"{len(shapes)} of another shape: {_first(shapes, 3)}"] if shapes else []
    raise ConversionError(f"the state dict is not torchvision's {name} "
                          f"({TORCHVISION[name]}, {ckpt_classes} classes): " + "; ".join(parts))
  return variables


def to_torchvision(variables: Mapping[str, Any] | TrainedNetwork, name: Optional[str] = None,
                   **overrides: Any) -> Dict[str, np.ndarray]:
  """Our `{"params", "batch_stats"}` of network `name` -> a torchvision state dict of numpy
  arrays (`torch.from_numpy` each, or save with safetensors); `num_batches_tracked` is 0.

  Given a `TrainedNetwork`, its own network is converted (`name` and `overrides` are not
  needed), and refused when torchvision has no such network (e.g. the paper's `resnet50`).
  """
  if isinstance(variables, TrainedNetwork):
    model, name, variables = variables.model, variables.name, variables.variables
  else:
    if name is None:
      raise errors.InputError("to_torchvision(variables, name): name the network, e.g. 'resnet50_v1_5'")
    name = our_name(name)
    params = variables["params"]
    num_classes = int(np.shape(params["head"]["kernel"])[1]) if "head" in params else 0
    model = models.create(name, num_classes=num_classes, **overrides)
  out = {}
  for key, (collection, path, layout) in _leaf_map(model, name).items():
    try:
      out[key] = np.ascontiguousarray(_to_torch(np.asarray(_get(variables[collection], path)), layout))
    except KeyError:
      raise ConversionError(f"{name}: the variables have no {collection}/{path} (for {key})") from None
    if key.endswith(".running_var"):
      out[key.replace(".running_var", ".num_batches_tracked")] = np.zeros((), np.int64)
  return out


def read(path: str | pathlib.Path) -> Dict[str, Any]:
  """The state dict of a torchvision/timm checkpoint file.

  `.safetensors` (what timm and the model hubs publish) and `.npz` need no torch;
  `.pth` / `.pt` need torch (`pip install 'resnet-jax[torch]'`).
  """
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"no checkpoint file {path}")
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
    raise errors.InputError(f"unknown checkpoint format {path.suffix!r} of {path}; valid: .safetensors, .npz, .pth, .pt")
  state_dict = {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}  # DataParallel prefixes
  _warn_suspicious(path, state_dict)
  return state_dict


def _torch_for_pth(path: pathlib.Path) -> Any:
  """torch, when installed at a version whose `weights_only=True` loading is safe (one-line errors)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional, and seconds to import)
  except ImportError:
    raise ImportError(f"reading {path.name} needs PyTorch: pip install 'resnet-jax[torch]' (or convert "
                      "it to .safetensors, which needs no torch)") from None
  if Version(torch.__version__) < MIN_TORCH_FOR_PTH:
    raise ImportError(f"reading {path.name} needs torch >= {MIN_TORCH_FOR_PTH}, found {torch.__version__}: older "
                      "torch.load can run code from the file even with weights_only=True (CVE-2025-32434); "
                      "pip install -U 'resnet-jax[torch]', or convert the file to .safetensors elsewhere")
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


def load(path: str | pathlib.Path, name: str, num_classes: Optional[int] = None,
         **overrides: Any) -> Dict[str, Any]:
  """Reads a torchvision/timm checkpoint file (`read`) and converts it (`from_torchvision`)."""
  return from_torchvision(read(path), name, num_classes=num_classes, **overrides)


def pretrained(name: str, path: str | pathlib.Path | Mapping[str, Any], num_classes: Optional[int] = None,
               seed: int = 0, preprocessing: Optional[Preprocessing] = None, **overrides: Any) -> TrainedNetwork:
  """The network of torchvision's `name` with the weights of `path` (a checkpoint file, or a
  state dict in memory) and its input preprocessing; unpacks as `model, variables = ...`.

  `num_classes`: None keeps the checkpoint's classifier; 0 gives the headless backbone
  (pooled features); another number replaces the classifier with a new one initialised
  from `seed` (fine-tuning), and says so in the log. `preprocessing`: torchvision's ImageNet
  evaluation by default (`Preprocessing.imagenet()`: shorter side 256, center 224, ImageNet
  mean/std); give the checkpoint's own where it differs (timm's `pretrained_cfg`, e.g.
  `Preprocessing.imagenet(224, 235, "bicubic")` for crop_pct 0.95).
  """
  name = our_name(name)
  from_file = not isinstance(path, Mapping)
  state_dict = read(path) if from_file else path
  variables = from_torchvision(state_dict, name, num_classes=num_classes, **overrides)
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
