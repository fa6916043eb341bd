"""The persistent compilation cache: default location, explicit directory, off switch."""
import os
import pathlib
import subprocess
import sys

from resnet_jax.runtime import compilation_cache as cc

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_directory_default_explicit_and_off():
  assert cc.directory({"XDG_CACHE_HOME": "/c"}) == pathlib.Path("/c/resnet_jax/jax_cache")
  assert cc.directory({"HOME": "/h"}).parts[-2:] == ("resnet_jax", "jax_cache")
  assert cc.directory({cc.ENV: "/tmp/x"}) == pathlib.Path("/tmp/x")
  for off in ("off", "OFF", "0", "false", ""):
    assert cc.directory({cc.ENV: off}) is None


WORKER = """
import sys
from resnet_jax.runtime import compilation_cache
import jax, jax.numpy as jnp
print(compilation_cache.enable())
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
print(jax.config.jax_compilation_cache_dir)
"""


def _run(tmp_path, **env):
  env = {**{k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"},
         "JAX_PLATFORMS": "cpu", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "XDG_CACHE_HOME": str(tmp_path / "xdg"), "PYTHONPATH": str(ROOT), **env}
  out = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True, text=True,
                       timeout=120, check=True)
  return out.stdout.split()


def test_compiled_programs_are_written_where_asked_and_not_when_off(tmp_path):
  default = tmp_path / "xdg" / "resnet_jax" / "jax_cache"
  assert _run(tmp_path) == [str(default)] * 2 and any(default.iterdir())
  assert _run(tmp_path, RESNET_JAX_COMPILATION_CACHE=str(tmp_path / "mine"))[0] == str(tmp_path / "mine")
  assert any((tmp_path / "mine").iterdir())
  assert _run(tmp_path / "other", RESNET_JAX_COMPILATION_CACHE="off") == ["None", "None"]
  assert not (tmp_path / "other").exists()
  jax_own = str(tmp_path / "jax_own")  # a directory given to JAX itself is kept
  assert _run(tmp_path, JAX_COMPILATION_CACHE_DIR=jax_own) == [jax_own] * 2
