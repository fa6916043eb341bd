"""Where a result came from: the code's commit and the devices it ran on (recorded with every run)."""
from __future__ import annotations

import pathlib
import platform
import subprocess

import jax


def git_commit() -> str:
  """`git describe` of the package's checkout ("-dirty" with uncommitted changes), or "unknown"."""
  try:
    out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True, text=True,
                         timeout=10, cwd=pathlib.Path(__file__).resolve().parents[2])
    return out.stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def device_description() -> str:
  """E.g. "8x NVIDIA H100 (gpu), host1"."""
  devices = jax.devices()
  return f"{len(devices)}x {devices[0].device_kind} ({jax.default_backend()}), {platform.node()}"
