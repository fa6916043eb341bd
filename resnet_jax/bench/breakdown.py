"""`resnet-jax bench --breakdown`: what each of the engine's extras costs, timed side by side.

The engine's step does more than a minimal Flax step (`minimal.py`): BatchNorm statistics
over the papers' per-GPU groups, the running variance of the unbiased batch variance,
on-device augmentation, the NaN guard, the metric sums, and the modern recipes' parts when a
config turns them on (LAMB/LARS/AdamW instead of SGD, gradient clipping, accumulation, the EMA
of the weights, BCE, RandAugment/TrivialAugment, random erasing, mixup/CutMix; repeated
augmentation only reorders the sampler's indices on the host). For each extra the config has on,
the breakdown times the step without it (a config override, or a `StepExtras` switch), and
the step without any of them, in the same interleaved windows as the full step; the
report gives each extra's cost as the share of the full step's time it takes.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Dict, List, Mapping, NamedTuple

import ml_collections

from resnet_jax.train import config as config_lib
from resnet_jax.train.step import StepExtras

ALL_OFF = "without extras"


class Extra(NamedTuple):
  what: str
  off: Mapping[str, Any]            # config overrides that remove it
  step_off: Mapping[str, bool]      # StepExtras fields that remove it


EXTRAS = {
    "ghost BN": Extra("BatchNorm statistics over groups of bn.ghost_batch_size", {"bn.mode": "global"}, {}),
    "unbiased var": Extra("running variance of the unbiased batch variance", {"bn.unbiased_variance": False}, {}),
    "augment": Extra("on-device random crop and flip", {"data.augment": False}, {}),
    "lighting": Extra("on-device PCA lighting noise", {"data.pca_lighting": False}, {}),
    "color jitter": Extra("on-device colour jitter", {"data.color_jitter": 0.0}, {}),
    "optimizer": Extra("LAMB / LARS / AdamW (optimizer.name) instead of SGD", {"optimizer.name": "sgd"}, {}),
    "clipping": Extra("global-norm gradient clipping", {"optimizer.clip_grad_norm": 0.0}, {}),
    "accumulation": Extra("gradients of accumulation_steps micro-batches (lax.scan)", {"accumulation_steps": 1}, {}),
    "EMA": Extra("moving average of params and BN statistics", {"ema.decay": 0.0, "ema.keep_best": False}, {}),
    "BCE": Extra("binary cross-entropy instead of softmax cross-entropy", {"loss": "cross_entropy"}, {}),
    "policy": Extra("on-device RandAugment / TrivialAugment", {"augmentation.policy": "none"}, {}),
    "erasing": Extra("on-device random erasing", {"augmentation.random_erasing": 0.0}, {}),
    "mixup/CutMix": Extra("on-device mixup / CutMix of images and targets",
                          {"augmentation.mixup_alpha": 0.0, "augmentation.cutmix_alpha": 0.0}, {}),
    "NaN guard": Extra("first non-finite loss or gradient recorded", {}, {"nonfinite_guard": False}),
    "metrics": Extra("loss and training-error sums", {}, {"metrics": False}),
}


def _has(config: ml_collections.ConfigDict, key: str) -> bool:
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def active(config: ml_collections.ConfigDict) -> List[str]:
  """The extras `config` has on (an override that would change something)."""
  names = []
  for name, extra in EXTRAS.items():
    if extra.step_off or any(_has(config, k) and _get(config, k) != v for k, v in extra.off.items()):
      names.append(name)
  return names


def variants(config: ml_collections.ConfigDict) -> Dict[str, tuple]:
  """Candidate name -> (config, StepExtras) for the step without each active extra, and without all."""
  names = active(config)
  out = {}
  for label, removed in [(f"step -{n}", [n]) for n in names] + [(ALL_OFF, names)]:
    overrides, switches = {}, {}
    for name in removed:
      overrides.update({k: v for k, v in EXTRAS[name].off.items() if _has(config, k)})
      switches.update(EXTRAS[name].step_off)
    out[label] = (config_lib.apply_overrides(config, overrides), dataclasses.replace(StepExtras(), **switches))
  return out


def costs(seconds: Mapping[str, List[float]], full: str) -> Dict[str, float]:
  """Each extra's share of the full step's time: 1 - t(without it) / t(full), per-round medians."""
  out = {}
  for name, times in seconds.items():
    if name == full:
      continue
    rounds = [1.0 - t / f for t, f in zip(times, seconds[full])]
    out[name] = statistics.median(rounds)
  return out
