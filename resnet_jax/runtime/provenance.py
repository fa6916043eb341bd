"""Where a result came from: the code's version and commit, and the devices it ran on (recorded
with every run).

The version is the package's (`resnet_jax.__version__`), always known. The commit is recorded
only where it is really this package's: when the package is imported from a git checkout of
resnet_jax itself (an editable install, a clone on `sys.path`). Installed from a wheel there is
none; installed inside a repository of the user's own (a virtual environment in their project),
that repository's commit is not resnet_jax's, and is not recorded.
"""
from __future__ import annotations

import functools
import pathlib
import platform
import subprocess
from typing import Dict, Optional

import jax

from resnet_jax import DISTRIBUTION, __version__

_CHECKOUT = pathlib.Path(__file__).resolve().parents[2]  # the folder holding the package
PROJECT_NAME = DISTRIBUTION  # pyproject.toml's [project] name, which a resnet_jax checkout holds


def _git(args: list, cwd: pathlib.Path) -> Optional[str]:
  try:
    out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=cwd, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None if out.returncode == 0 else None


def _is_this_project(root: pathlib.Path) -> bool:
  try:
    text = (root / "pyproject.toml").read_text()
  except OSError:
    return False
  return f'name = "{PROJECT_NAME}"' in text


@functools.lru_cache(maxsize=None)
def git_commit(checkout: pathlib.Path = _CHECKOUT) -> Optional[str]:
  """`git describe` of resnet_jax's own checkout ("-dirty" with uncommitted changes), or None
  when the package is not imported from one (module docstring)."""
  top = _git(["rev-parse", "--show-toplevel"], checkout)
  if top is None or pathlib.Path(top).resolve() != checkout or not _is_this_project(checkout):
    return None
  return _git(["describe", "--always", "--dirty", "--abbrev=7"], checkout)


def code_version() -> Dict[str, Optional[str]]:
  """`{"resnet_jax": version, "commit": commit or None}`: what a run records of its code."""
  return {"resnet_jax": __version__, "commit": git_commit()}


def describe_code() -> str:
  """E.g. "resnet_jax 0.1.0 (commit 6df7078)", or "resnet_jax 0.1.0" installed from a wheel."""
  commit = git_commit()
  return f"resnet_jax {__version__}" + (f" (commit {commit})" if commit else "")


def device_description() -> str:
  """E.g. "8x NVIDIA H100 (gpu), host1"."""
  devices = jax.devices()
  return f"{len(devices)}x {devices[0].device_kind} ({jax.default_backend()}), {platform.node()}"
