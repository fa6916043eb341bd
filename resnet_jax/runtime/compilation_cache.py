"""JAX's persistent compilation cache, on by default for the engine and the CLI.

Compiling a train step takes seconds (ResNet-20) to minutes (ResNet-50 on a CPU); every
restart (a resumed run, a preempted job, the next seed of a study, `resnet-jax bench`)
compiled it again. With the cache, XLA's executables are written to disk and a later
process with the same program, JAX version and devices loads them instead
(experiments/README.md, "Compilation cache", has the measured times).

Where: `$RESNET_JAX_COMPILATION_CACHE` when it names a directory, else
`$XDG_CACHE_HOME/resnet_jax/jax_cache` (default `~/.cache/resnet_jax/jax_cache`).
`RESNET_JAX_COMPILATION_CACHE=off` turns it off. A cache directory the user gave JAX
itself (`JAX_COMPILATION_CACHE_DIR`, `jax.config.update("jax_compilation_cache_dir", ...)`)
is kept as it is.
"""
from __future__ import annotations

import os
import pathlib
from typing import Mapping, Optional

import jax

ENV = "RESNET_JAX_COMPILATION_CACHE"
OFF = ("off", "0", "false", "no", "none", "")


def default_directory(environ: Mapping[str, str] = os.environ) -> pathlib.Path:
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "resnet_jax" / "jax_cache"


def directory(environ: Mapping[str, str] = os.environ) -> Optional[pathlib.Path]:
  """The cache directory `environ` asks for, or None when it is switched off."""
  value = environ.get(ENV)
  if value is None:
    return default_directory(environ)
  if value.strip().lower() in OFF:
    return None
  return pathlib.Path(value).expanduser()


def enable(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """Points JAX's persistent cache at `directory(environ)` unless JAX already has one.

  Returns the directory in use, or None when the cache is off. Idempotent; call it
  before the first compilation (later calls do not move a cache JAX has opened).
  """
  current = jax.config.jax_compilation_cache_dir
  if current:
    return str(current)
  path = directory(environ)
  if path is None:
    return None
  jax.config.update("jax_compilation_cache_dir", str(path))
  return str(path)
