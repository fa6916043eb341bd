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
import pathlib
import sys
from typing import Any, Mapping, Optional, Sequence, Union

import ml_collections

from resnet_jax.train.config import ConfigError, apply_overrides, parse_assignments

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


def resolve(spec: str) -> tuple[pathlib.Path, Optional[str]]:
  """`NAME[:arg]` or `PATH.py[:arg]` -> (file, arg or None)."""
  name, _, arg = spec.partition(":")
  candidate = pathlib.Path(name).expanduser()
  if candidate.suffix == ".py" or candidate.is_file():
    if not candidate.is_file():
      raise ConfigError(f"config file {name!r} does not exist")
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
  finally:
    sys.path.remove(str(file.parent))
  return module


def load(spec: str, overrides: Overrides = None) -> ml_collections.ConfigDict:
  """The config `spec` (`NAME`, `NAME:smoke`, `path/to/file.py[:arg]`) with `overrides` applied."""
  file, arg = resolve(spec)
  module = _module(file)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{file} has no get_config(arg=None) function")
  try:
    config = module.get_config(arg)
  except ValueError as e:
    raise ConfigError(f"{spec}: {e}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{file}: get_config() returned {type(config).__name__}, not an ml_collections.ConfigDict")
  if not overrides:
    return config
  if isinstance(overrides, Mapping):
    return apply_overrides(config, overrides)
  if isinstance(overrides, str):
    overrides = [overrides]
  return parse_assignments(config, list(overrides))


__all__ = ["ConfigError", "apply_overrides", "load", "names", "parse_assignments", "path", "resolve"]
