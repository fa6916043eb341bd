"""Checks on experiment configs, the training length, and the config saved in a workdir."""
from __future__ import annotations

import difflib
import json
import pathlib
from typing import Any, Iterable, List, Mapping

import ml_collections

from resnet_jax import models
from resnet_jax.train import optim, step as step_lib

CONFIG_FILE = "config.json"


class ConfigError(ValueError):
  """A config value or override key is invalid; the message names it and what is valid."""


def dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> List[str]:
  """Every leaf field as a dotted path, e.g. "optimizer.learning_rate"."""
  keys = []
  for k, v in config.items():
    path = f"{prefix}{k}"
    if isinstance(v, ml_collections.ConfigDict):
      keys.extend(dotted_keys(v, path + "."))
    else:
      keys.append(path)
  return keys


def check_override_keys(config: ml_collections.ConfigDict, keys: Iterable[str]) -> None:
  """Raises `ConfigError` for an override key the config does not have, with near matches."""
  valid = dotted_keys(config)
  groups = {k.rsplit(".", 1)[0] for k in valid if "." in k}
  for key in keys:
    if key in valid or key in groups:
      continue
    group, _, leaf = key.rpartition(".")
    if group in groups:  # compare names within the same sub-config
      siblings = [k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == group]
      close = [f"{group}.{m}" for m in difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)]
    else:
      close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(f"unknown config field {key!r}{hint} (all fields: configs/base.py and the "
                      "experiment's config file)")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with dotted-key overrides; an unknown key is an error naming near matches."""
  config = ml_collections.ConfigDict(config.to_dict())
  # Training fields live at the top level (`num_steps`); `train.num_steps` names the same field.
  if "train" not in config:
    overrides = {(k[len("train."):] if k.startswith("train.") else k): v for k, v in overrides.items()}
  # Any ResNet field may be set under `model.`, whether or not the config lists it.
  model_fields = set(models.field_names())
  check_override_keys(
      config, [k for k in overrides if not (k.startswith("model.") and k[len("model."):] in model_fields)])
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    if leaf in node and isinstance(node[leaf], ml_collections.ConfigDict) and isinstance(value, Mapping):
      node[leaf].update(value)
    else:
      if leaf in node and isinstance(node[leaf], tuple) and isinstance(value, list):
        value = tuple(value)
      node[leaf] = value
  return config


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Training length in optimiser steps from `num_steps` or `num_epochs`."""
  if config.num_steps > 0:
    return int(config.num_steps)
  return int(round(float(config.num_epochs) * steps_per_epoch))


def validate(config: ml_collections.ConfigDict) -> None:
  """One-line errors for values that would otherwise fail deep inside JAX or Optax."""
  if (config.num_steps > 0) == (config.num_epochs > 0):
    raise ConfigError(f"exactly one of num_steps={config.num_steps} and num_epochs={config.num_epochs} "
                      "must be positive")
  choices = {
      "bn.mode": (config.bn.mode, step_lib.BN_MODES),
      "dtype": (config.dtype, tuple(step_lib.DTYPES)),
      "schedule.name": (config.schedule.name, optim.SCHEDULES),
      "schedule.unit": (config.schedule.unit, optim.UNITS),
      "schedule.warmup_mode": (config.schedule.warmup_mode, optim.WARMUP_MODES),
      "optimizer.weight_decay_mode": (config.optimizer.weight_decay_mode, optim.WEIGHT_DECAY_MODES),
  }
  for name, (value, valid) in choices.items():
    if value not in valid:
      raise ConfigError(f"{name}={value!r} is not one of {valid}")
  for name in ("global_batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps",
               "steps_per_dispatch", "eval_every_epochs"):
    if int(config[name]) < 1:
      raise ConfigError(f"{name}={config[name]} must be at least 1")
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ConfigError(f"label_smoothing={config.label_smoothing} must be in [0, 1)")
  if config.optimizer.learning_rate <= 0:
    raise ConfigError(f"optimizer.learning_rate={config.optimizer.learning_rate} must be positive")
  step_lib.bn_model_fields(config)


def save_config(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> None:
  path = pathlib.Path(workdir) / CONFIG_FILE
  path.write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config a `train` run saved in its workdir (lists become tuples again)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist: is {workdir} the --workdir of a `resnet-jax train` run?")

  def tuples(x):
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(tuples(v) for v in x)
    return x
  return ml_collections.ConfigDict(tuples(json.loads(path.read_text())))
