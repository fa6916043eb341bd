"""The experiment-config schema: valid values, override parsing, and the workdir copy.

This module decides what a config may contain; `resnet_jax.train.build` checks a config
once (`validate`) and turns it into a model, optimiser and input pipeline, and
`resnet_jax.configs` loads the named config files. Override values are parsed in one way everywhere (the command line,
`rj.configs.load(overrides=...)` with strings, the experiments' `--set`): by
`ml_collections.config_flags`, typed by the field's current value.
"""
from __future__ import annotations

import copy
import difflib
import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Sequence

import jax.numpy as jnp
import ml_collections
from absl import flags
from ml_collections import config_flags

from resnet_jax import errors
from resnet_jax import models
from resnet_jax.storage import object_store
from resnet_jax.storage.workdir import Workdir

CONFIG_FILE = Workdir.CONFIG
# Fields every saved config has (an older or damaged file without them is not one).
SAVED_CONFIG_KEYS = ("model", "data", "optimizer", "schedule", "global_batch_size", "seed")
# Seeds reach NumPy's SeedSequence (non-negative) and JAX's PRNGKey (at most 64 bits): the
# usual 32-bit range is accepted.
MAX_SEED = 2**32 - 1
# The step counter (the train state's, the schedules' count) is a 32-bit integer.
MAX_STEPS = 2**31 - 1

# Choices of the engine's fields (the modules that use them import them from here).
BN_MODES = ("global", "per_device", "ghost")
# Compute dtypes (parameters and BN statistics stay float32). float16 needs loss scaling,
# which the engine does not do: `validate` refuses it with the way out.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DTYPE_NAMES = tuple(DTYPES)
# A model field that is a group of its own: `--config.model.shortcut_options.rate=0.3`.
MODEL_OPTION_GROUPS = ("shortcut_options", "norm_options", "attention_options", "identity_init_options")
SCHEDULES = ("step", "cosine", "polynomial", "constant")
OPTIMIZER_NAMES = ("sgd", "adamw", "lamb", "lars")
LOSSES = ("cross_entropy", "binary_cross_entropy")
AUGMENT_POLICIES = ("none", "randaugment", "trivialaugment")
SCHEDULE_UNITS = ("steps", "epochs")
WARMUP_MODES = ("constant", "linear")
WEIGHT_DECAY_MODES = ("coupled", "decoupled")

# ResNet fields that the engine sets from other parts of the config; setting them under
# `model.` would give two owners to one fact.
ENGINE_MODEL_FIELDS = {
    "num_classes": "it comes from the dataset (data.name); to train another dataset set "
                   "--config.data.name",
    "dtype": "set the top-level --config.dtype (float32 | bfloat16)",
    "param_dtype": "parameters are kept in float32 for training; set --config.dtype for the "
                   "compute dtype",
}
# BatchNorm options (`model.norm_options.*`) that the engine sets from `config.bn`.
ENGINE_NORM_OPTIONS = {
    "axis_name": "set --config.bn.mode (global | per_device | ghost)",
    "group_size": "set --config.bn.mode=ghost and --config.bn.ghost_batch_size",
    "unbiased_variance": "set --config.bn.unbiased_variance",
}


class ConfigError(errors.InputError):
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


def _model_field(key: str) -> str | None:
  """The `ResNet` field a dotted key sets (`model.shortcut_options.rate` sets shortcut_options)."""
  if not key.startswith("model."):
    return None
  field = key[len("model."):]
  group = field.split(".", 1)[0]
  return group if group in MODEL_OPTION_GROUPS else field


def check_override_keys(config: ml_collections.ConfigDict, keys: Iterable[str]) -> None:
  """Raises `ConfigError` for a key the config does not have (with near matches), or an
  engine-owned model field.

  Any field of `resnet_jax.models.ResNet` may be set under `model.`, whether or not the
  config file lists it.
  """
  valid = dotted_keys(config)
  groups = {k.rsplit(".", 1)[0] for k in valid if "." in k}
  model_fields = set(models.field_names())
  for key in keys:
    field = _model_field(key)
    if field in ENGINE_MODEL_FIELDS:
      raise ConfigError(f"model.{field} cannot be set: {ENGINE_MODEL_FIELDS[field]}")
    option = key.split(".")[2] if field == "norm_options" and key.count(".") >= 2 else None
    if option in ENGINE_NORM_OPTIONS:
      raise ConfigError(f"model.norm_options.{option} cannot be set: {ENGINE_NORM_OPTIONS[option]}")
    if key in valid or key in groups or field in model_fields:
      continue
    group, _, leaf = key.rpartition(".")
    if group == "model":
      siblings = sorted(model_fields - set(ENGINE_MODEL_FIELDS))
      close = [f"model.{m}" for m in difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)]
    elif group in groups:  # compare names within the same sub-config
      siblings = [k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == group]
      close = [f"{group}.{m}" for m in difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)]
    else:
      close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(f"unknown config field {key!r}{hint} (all fields: resnet_jax/configs/base.py, the "
                      "experiment's config file, and any resnet_jax.models.ResNet field under model.)")


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return copy.deepcopy(config)


def _add_model_groups(config: ml_collections.ConfigDict, keys: Iterable[str]) -> None:
  """Creates the model option groups (`model.shortcut_options`) that `keys` set options of."""
  for key in keys:
    parts = key.split(".")
    if len(parts) >= 3 and parts[0] == "model" and parts[1] in MODEL_OPTION_GROUPS:
      if not isinstance(config.model.get(parts[1]), ml_collections.ConfigDict):
        config.model[parts[1]] = ml_collections.ConfigDict(dict(config.model.get(parts[1]) or {}))


def parse_assignments(config: ml_collections.ConfigDict, assignments: Sequence[str]
                      ) -> ml_collections.ConfigDict:
  """A copy of `config` with `["key=value", ...]` applied, values parsed from text.

  The parser is `ml_collections.config_flags` (the command line's `--config.key=value`):
  a value is read as the type of the field it replaces (`true`/`false` for booleans,
  `'(16, 32)'` for tuples); new fields (a `model.` field the file does not list) take a
  Python literal, or the text itself.
  """
  bad = [a for a in assignments if "=" not in a or not a.split("=", 1)[0]]
  if bad:
    raise ConfigError(f"override {bad[0]!r} is not KEY=VALUE, e.g. optimizer.learning_rate=0.05")
  pairs = [a.split("=", 1) for a in assignments]
  check_override_keys(config, [k for k, _ in pairs])
  config = _copy(config)
  _add_model_groups(config, [k for k, _ in pairs])
  for key, _ in pairs:  # a None-valued field has no type to parse by: read it as a literal
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p] if p in node else None
      if not isinstance(node, ml_collections.ConfigDict):
        break
    if isinstance(node, ml_collections.ConfigDict) and leaf in node and node[leaf] is None:
      try:
        node[leaf] = ml_collections.FieldReference(None, field_type=object)
      except TypeError:  # a typed reference (e.g. data.data_dir: str) parses by its type
        pass
  fv = flags.FlagValues()
  argv = ["resnet-jax"] + [f"--config.{k}={v}" for k, v in pairs]
  try:
    holder = config_flags.DEFINE_config_dict("config", config, flag_values=fv, lock_config=False,
                                             accept_new_attributes=True, sys_argv=argv)
    fv(argv)
  except (flags.Error, TypeError, ValueError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    raise ConfigError(lines[-1] if lines else str(e)) from None
  return _tuples(holder.value)


def _tuples(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Lists (from JSON or literals) become tuples, as config files write them."""
  def conv(x):
    if isinstance(x, dict):
      return {k: conv(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(conv(v) for v in x)
    return x
  out = ml_collections.ConfigDict(conv(config.to_dict()))
  return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
                    ) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-key overrides given as Python values.

  String values for non-string fields are parsed as on the command line
  (`parse_assignments`), so `{"num_steps": "100"}` and `{"num_steps": 100}` agree.
  """
  config = _copy(config)
  # Training fields live at the top level (`num_steps`); `train.num_steps` names the same field.
  if "train" not in config:
    overrides = {(k[len("train."):] if k.startswith("train.") else k): v for k, v in overrides.items()}
  # A model option group given whole (`{"model.norm_options": {...}}`): its options are keys too.
  check_override_keys(config, list(overrides) + [f"{k}.{o}" for k, v in overrides.items()
                                                 if _model_field(k) in MODEL_OPTION_GROUPS and isinstance(v, Mapping)
                                                 for o in v])
  _add_model_groups(config, overrides)
  text = {}
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    current = node[leaf] if leaf in node else None
    if isinstance(value, str) and not isinstance(current, str):
      text[key] = value  # parsed below, typed by the field
      continue
    if leaf in node and isinstance(current, ml_collections.ConfigDict) and isinstance(value, Mapping):
      current.update(value)
      continue
    if isinstance(value, list):
      value = tuple(value)
    try:
      node[leaf] = value
    except TypeError as e:
      raise ConfigError(f"{key}={value!r}: {e}") from None
  if text:
    config = parse_assignments(config, [f"{k}={v}" for k, v in text.items()])
  return config


def _plain(value: Any) -> Any:
  """Config values as plain Python: groups as dicts, lists as tuples (as config files write them)."""
  if isinstance(value, (ml_collections.ConfigDict, Mapping)):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_plain(v) for v in value)
  return value


def model_fields(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """`config.model` without its name, as `ResNet` keyword arguments."""
  return {k: _plain(v) for k, v in config.model.items() if k != "name"}


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Training length in optimiser steps from `num_steps` or `num_epochs`; at least one
  (`ConfigError` for a `num_epochs` shorter than a step)."""
  if config.num_steps > 0:
    return int(config.num_steps)
  steps = int(round(float(config.num_epochs) * steps_per_epoch))
  if steps < 1:
    raise ConfigError(f"num_epochs={config.num_epochs} is {steps} steps at {steps_per_epoch} steps per epoch; "
                      f"train at least one step (num_epochs >= {1 / steps_per_epoch:.3g}, or num_steps)")
  if steps > MAX_STEPS:
    raise ConfigError(f"num_epochs={config.num_epochs} is {steps:,} steps at {steps_per_epoch} steps per epoch; "
                      f"at most {MAX_STEPS:,} (2**31 - 1: the step counter is a 32-bit integer)")
  return steps


def choice(name: str, value: Any, valid: Sequence[Any] | Mapping[Any, Any]) -> Any:
  """`valid[value]` for a table, `value` for a tuple of choices; else a `ConfigError` naming both.

  The one way a field's choice is checked, by `validate` and wherever the value is used.
  """
  if value not in valid:
    raise ConfigError(f"{name}={value!r} is not one of {tuple(valid)}")
  return valid[value] if isinstance(valid, Mapping) else value


def parse_init_from(spec: str) -> tuple:
  """`"WORKDIR[:latest|best|STEP]"` -> `(path, step)`; step None means latest."""
  path, sep, step = str(spec).rpartition(":")
  if not sep or "/" in step or not step:  # no step given (or a ':' inside the path)
    path, step = str(spec), None
  elif step not in ("latest", "best"):
    if not step.isdigit():
      raise ConfigError(f"init_from={spec!r}: the step after ':' must be a number, 'latest' or 'best'")
    step = int(step)
  if not Workdir(path).has(CONFIG_FILE):
    raise ConfigError(f"init_from={spec!r}: {path} is not the --workdir of a `resnet-jax train` run "
                      f"(no {CONFIG_FILE})")
  return path, step


def to_json_value(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The config as plain JSON data (what `config.json` and each checkpoint record)."""
  return json.loads(config.to_json_best_effort())


def save_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike | Workdir) -> None:
  """Writes `workdir/config.json` atomically (a copy: each checkpoint records the config too)."""
  Workdir(workdir).write_text(CONFIG_FILE, config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def config_from_dict(value: Any, source: str) -> ml_collections.ConfigDict:
  """A config saved as JSON (lists become tuples again); `ConfigError` naming `source` if it is none."""
  missing = [k for k in SAVED_CONFIG_KEYS if not isinstance(value, Mapping) or k not in value]
  if missing:
    what = f"a JSON {type(value).__name__}" if not isinstance(value, Mapping) else f"no {', '.join(missing)}"
    raise ConfigError(f"{source} is not a resnet_jax config ({what})")
  return _tuples(ml_collections.ConfigDict(dict(value)))


def load_config(workdir: str | os.PathLike | Workdir) -> ml_collections.ConfigDict:
  """The config a `train` run saved in its workdir (lists become tuples again).

  Raises FileNotFoundError when there is none and `ConfigError` naming the file and the
  way out when it is damaged.
  """
  workdir = Workdir(workdir)
  path = workdir / CONFIG_FILE
  try:
    text = workdir.read_text(CONFIG_FILE)
  except FileNotFoundError:
    raise errors.MissingError(f"{path} does not exist: is {workdir} the --workdir of a `resnet-jax train` "
                            "run?") from None
  way_out = (f"restore it, or run `resnet-jax train` with the run's --config and --workdir {workdir} once to "
             "write it again (its checkpoints record the config and refuse another)")
  try:
    value = json.loads(text)
  except ValueError as e:
    raise ConfigError(f"{path} is damaged ({type(e).__name__}: {e}); {way_out}") from None
  try:
    return config_from_dict(value, str(path))
  except ConfigError as e:
    raise ConfigError(f"{e}; {way_out}") from None


def with_local_data_dir(config: ml_collections.ConfigDict, data_dir: str | os.PathLike | None = None
                        ) -> ml_collections.ConfigDict:
  """A run's saved config, to read its data on this machine: `data.data_dir` becomes
  `data_dir` when given; else it stays as recorded where that folder exists here (a bucket's
  URL is the same everywhere); else (the run was trained on another machine) it is this
  user's: $TFDS_DATA_DIR, else ~/tensorflow_datasets (None, TFDS's convention)."""
  recorded = config.data.data_dir
  here = recorded is None or object_store.is_url(recorded) or os.path.isdir(os.path.expanduser(str(recorded)))
  if not data_dir and here:
    return config
  config = _copy(config)
  config.data.data_dir = str(data_dir) if data_dir else None
  return config
