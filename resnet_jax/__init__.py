"""resnet_jax: deep residual networks (ResNet, pre-activation ResNet, ResNeXt) in JAX/Flax.

`resnet_jax.models` (imported with the package) holds the networks; the other parts load
on first use: `rj.configs` (the papers' experiment configs), `rj.data` (input pipelines),
`rj.train` (the training engine), `rj.storage` (a run's workdir, local or gs://),
`rj.compare` / `rj.study` (variant studies), `rj.paper`
(the papers' numbers), `rj.analysis` (the papers' analyses of signal and gradient), `rj.interop` (torchvision / timm weights in and out), `rj.TrainedNetwork`
(a network with its weights and input preprocessing, from `rj.train.load_network` or
`rj.interop.pretrained`).
"""
import importlib
from typing import Any

from resnet_jax import models
from resnet_jax.models import (BasicBlock, BatchNorm, BottleneckBlock, Conv1x1Shortcut, DropoutShortcut,
                               GatedShortcut, NoShortcut, PlainNet, ProjectionShortcut, ResNeXtBlock, ResNet,
                               ResidualUnit, ScaledShortcut, ZeroPadShortcut)

__version__ = "0.1.0"
# The name on the package index (`pip install resnetax`): `resnet-jax` there is another project.
DISTRIBUTION = "resnetax"
# What the package imports eagerly; the modules of `_LAZY_MODULES` load on first use.
__all__ = ["BasicBlock", "BatchNorm", "BottleneckBlock", "Conv1x1Shortcut", "DropoutShortcut", "GatedShortcut",
           "NoShortcut", "PlainNet", "ProjectionShortcut", "ResNeXtBlock", "ResNet", "ResidualUnit", "ScaledShortcut",
           "ZeroPadShortcut", "models"]
_LAZY_MODULES = {name: name for name in ("configs", "data", "train", "study", "stats", "paper", "interop", "reproduce",
                                          "runtime", "storage", "errors", "analysis")}
_LAZY_MODULES["allocator"] = "runtime.allocator"  # `rj.allocator`, from before the runtime package
_LAZY_NAMES = {"compare": "study", "Study": "study", "TrainedNetwork": "train.trained"}


def __getattr__(name: str) -> Any:
  if name in _LAZY_MODULES:
    return importlib.import_module(f"resnet_jax.{_LAZY_MODULES[name]}")
  if name in _LAZY_NAMES:
    return getattr(importlib.import_module(f"resnet_jax.{_LAZY_NAMES[name]}"), name)
  raise AttributeError(f"module 'resnet_jax' has no attribute {name!r}")
