"""Helpers shared by the test modules (fixtures are in conftest.py)."""
from __future__ import annotations

import json
import pathlib
import socket
import subprocess
from typing import Dict, List, Sequence

import ml_collections

from resnet_jax.configs import cifar10_resnet20

# The tiny prepared CIFAR-10 of conftest's `data_dir`: all of its train and test splits.
TINY_SPLITS = {"data.train_split": "train", "data.eval_split": "test"}
# For a subprocess that tests wiring (files written, tables printed, exit codes), not arithmetic:
# XLA without most optimisations compiles several times faster (`conftest.fast_compile`).
FAST_COMPILE_ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


def smoke_config(data_dir: str | pathlib.Path, eval_batch_size: int = 20, **overrides) -> ml_collections.ConfigDict:
  """`cifar10_resnet20:smoke` on the tiny dataset in `data_dir`, with dotted-key `overrides`."""
  config = cifar10_resnet20.get_config("smoke")
  fields = {**TINY_SPLITS, "eval_batch_size": eval_batch_size, "data.data_dir": str(data_dir), **overrides}
  for key, value in fields.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  return config


def free_port() -> int:
  """A TCP port free on 127.0.0.1 now (for a coordinator or a server the test starts)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(argvs: Sequence[Sequence[str]], env: Dict[str, str], cwd: pathlib.Path,
                  timeout: float = 300) -> List[dict]:
  """Runs one process per argv at once (e.g. the processes of one `jax.distributed` job);
  each must exit 0 and print a JSON object as its last line, which is returned."""
  procs = [subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for argv in argvs]
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=timeout)
    finally:
      if p.poll() is None:
        p.kill()
    assert p.returncode == 0, err[-3000:]
    outs.append(json.loads(out.strip().splitlines()[-1]))
  return outs
