"""The papers' experiment configs, shipped with the package (`configs/` in the repository
is a link to this folder).

Each `<name>.py` here has `get_config(arg=None)`; `arg="smoke"` gives its tiny CPU
variant. Load one by name, file path or either with `:smoke`, optionally with overrides.

Overrides are a mapping of dotted keys to values (strings are parsed as on the command
line) or a list of `"key=value"` strings; unknown keys, and the model fields the engine
owns (`num_classes`, `dtype`, BatchNorm grouping), are one-line `ConfigError`s.

Examples:
    >>> import resnet_jax as rj
    >>> config = rj.configs.load("cifar10_resnet110")
    >>> config = rj.configs.load("cifar10_resnet20:smoke", overrides={"model.shortcut": "gate"})
    >>> config = rj.configs.load("my_configs/wide.py", overrides=["optimizer.learning_rate=0.05"])
    >>> rj.configs.names()[:2]
    ['cifar100_preact_resnet1001', 'cifar100_preact_resnet164']
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import os
import pathlib
import sys
from typing import Any, Mapping, Optional, Sequence, Union

import ml_collections

from resnet_jax.configs import base
from resnet_jax.errors import one_line
from resnet_jax.train.config import ConfigError, apply_overrides, config_from_dict, parse_assignments

HERE = pathlib.Path(__file__).resolve().parent
_NOT_CONFIGS = ("__init__", "base")

Overrides = Union[Mapping[str, Any], Sequence[str], None]


def names() -> list[str]:
  """Every shipped config name, sorted."""
  return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in _NOT_CONFIGS and not p.stem.startswith("_"))


def path(name: str) -> pathlib.Path:
  """The file of a shipped config (`"cifar10_resnet20"`), for reading or copying."""
  file = HERE / f"{name}.py"
  if name in _NOT_CONFIGS or not file.is_file():
    close = difflib.get_close_matches(name, names(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"unknown config {name!r}{hint}; valid names: {', '.join(names())}, or a path to a .py "
                      "file with get_config()")
  return file


# What a config file may be: a Python file with get_config(arg=None), or a run's saved config.
FILE_KINDS = (".py", ".json")


def resolve(spec: str) -> tuple[pathlib.Path, Optional[str]]:
  """`NAME[:arg]`, `PATH.py[:arg]` or `PATH.json` (a run's `config.json`) -> (file, arg or None)."""
  name, _, arg = spec.partition(":")
  candidate = pathlib.Path(name).expanduser()
  if candidate.suffix or os.sep in name or candidate.exists():
    if candidate.suffix not in FILE_KINDS:
      raise ConfigError(f"config file {name!r} is not one resnet_jax reads: give a .py file with "
                        "get_config(arg=None), a run's saved config (WORKDIR/config.json), or a shipped name")
    if not candidate.is_file():
      raise ConfigError(f"config file {name!r} does not exist")
    if candidate.suffix == ".json" and arg:
      raise ConfigError(f"{spec}: a saved config (.json) takes no ':{arg}'")
    return candidate.resolve(), arg or None
  return path(name), arg or None


def _module(file: pathlib.Path):
  if file.parent == HERE:
    return importlib.import_module(f"resnet_jax.configs.{file.stem}")
  spec = importlib.util.spec_from_file_location(f"_resnet_jax_user_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  # A user's config folder may import its own shared base as a sibling module.
  sys.path.insert(0, str(file.parent))
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (a user's file can raise anything)
    raise ConfigError(f"config file {file} cannot be loaded: {one_line(e)}") from None
  finally:
    sys.path.remove(str(file.parent))
  return module


def _from_python(file: pathlib.Path, arg: Optional[str], spec: str) -> ml_collections.ConfigDict:
  module = _module(file)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{file} has no get_config(arg=None) function")
  try:
    config = module.get_config(arg)
  except ValueError as e:
    raise ConfigError(f"{spec}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except  (a user's get_config can raise anything)
    raise ConfigError(f"{spec}: get_config({arg!r}) raised {one_line(e)}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{file}: get_config() returned {type(config).__name__}, not an ml_collections.ConfigDict")
  return config


def _from_json(file: pathlib.Path) -> ml_collections.ConfigDict:
  """A run's saved config (`config.json`): what a changed recipe's refusal advises to resume with."""
  try:
    value = json.loads(file.read_text())
  except (OSError, ValueError) as e:
    raise ConfigError(f"config file {file} is not readable JSON ({one_line(e)})") from None
  return config_from_dict(value, str(file))


def _check_fields(config: ml_collections.ConfigDict, file: pathlib.Path) -> None:
  """Refuses a config without the fields every run reads (`base.base_config()`'s)."""
  missing = [k for k in base.base_config() if k not in config]
  if missing:
    listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    raise ConfigError(f"{file} lacks the config fields {listed}: a config starts from "
                      "resnet_jax.configs.base.base_config() (see any shipped config, rj.configs.path(NAME))")


def load(spec: str, overrides: Overrides = None) -> ml_collections.ConfigDict:
  """The config `spec` (`NAME`, `NAME:smoke`, `path/to/file.py[:arg]`, a run's `config.json`)
  with `overrides` applied."""
  file, arg = resolve(spec)
  config = _from_json(file) if file.suffix == ".json" else _from_python(file, arg, spec)
  _check_fields(config, file)
  if not overrides:
    return config
  if isinstance(overrides, Mapping):
    return apply_overrides(config, overrides)
  if isinstance(overrides, str):
    overrides = [overrides]
  return parse_assignments(config, list(overrides))


__all__ = ["ConfigError", "apply_overrides", "load", "names", "parse_assignments", "path", "resolve"]
