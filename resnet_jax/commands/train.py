"""`resnet-jax train --config NAME[:smoke] | PATH.py[:arg] --workdir DIR [--config.FIELD=VALUE ...]`.

The config is loaded once (`rj.configs.load`) and every `--config.FIELD=VALUE` applied by the
one override parser (`resnet_jax.train.config.parse_assignments`: ml_collections'
`config_flags`, typed by each field). `--config.FIELD VALUE`, a bare `--config.FLAG` (true)
and `--noconfig.FLAG` (false) are accepted as absl writes them. Multi-host runs add
`--coordinator_address`, `--num_processes` and `--process_id` where JAX cannot auto-detect
the cluster (it does on Cloud TPU and SLURM).
"""
from __future__ import annotations

import sys
from typing import List, Sequence, Tuple

from resnet_jax import configs
from resnet_jax.commands import ArgumentParser, UsageError
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import config as config_lib
from resnet_jax.train import loop
from resnet_jax.train import mesh as mesh_lib
from resnet_jax.train import workdir as workdir_lib

PROG = "resnet-jax train"
CONFIG_PREFIX, NO_CONFIG_PREFIX = "--config.", "--noconfig."


def parser() -> ArgumentParser:
  p = ArgumentParser(
      prog=PROG, description="Train a config in a workdir, resuming from its newest checkpoint.",
      epilog="Any config field can be set with --config.FIELD=VALUE (e.g. --config.optimizer.learning_rate=0.05); "
             "any resnet_jax.models.ResNet field under --config.model.FIELD.")
  p.add_argument("--config", help="a shipped config name (cifar10_resnet20, NAME:smoke) or PATH.py[:arg]")
  p.add_argument("--workdir", help="directory for checkpoints, metrics and the config")
  p.add_argument("--coordinator_address", default=None, help="host:port of process 0 (multi-host without "
                 "TPU/SLURM auto-detection)")
  p.add_argument("--num_processes", type=int, default=None, help="number of processes (multi-host)")
  p.add_argument("--process_id", type=int, default=None, help="this process's index (multi-host)")
  return p


def split_overrides(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
  """(`KEY=VALUE` overrides, the other arguments) from absl-style `--config.` flags."""
  overrides, rest, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(NO_CONFIG_PREFIX):
      overrides.append(f"{arg[len(NO_CONFIG_PREFIX):]}=false")
    elif arg.startswith(CONFIG_PREFIX):
      key_value = arg[len(CONFIG_PREFIX):]
      if "=" not in key_value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        key_value, i = f"{key_value}={argv[i + 1]}", i + 1  # --config.KEY VALUE
      elif "=" not in key_value:
        key_value = f"{key_value}=true"  # a bare boolean flag
      overrides.append(key_value)
    else:
      rest.append(arg)
    i += 1
  return overrides, rest


def parse(argv: Sequence[str]):
  """(args, config) for the command line; raises `UsageError` or `ConfigError` in one line."""
  overrides, rest = split_overrides(argv)
  args, unknown = parser().parse_known_args(rest)
  if args.config is None:
    raise UsageError("--config is required, e.g. --config cifar10_resnet20 (names: "
                     "`python -c 'import resnet_jax as rj; print(rj.configs.names())'`) or a path")
  config = configs.load(args.config, overrides)  # the flags the user wrote first, then the leftovers
  if unknown:
    raise UsageError(f"unrecognised arguments: {' '.join(unknown)} (see {PROG} --help)")
  if not args.workdir:
    raise UsageError("--workdir is required")
  return args, config


def _error(message: str) -> int:
  print(f"{PROG}: error: {message}", file=sys.stderr)
  return 2


def main(argv: Sequence[str]) -> int:
  try:
    args, config = parse(argv)
  except (UsageError, config_lib.ConfigError) as e:
    return _error(str(e))
  try:
    mesh_lib.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    result = loop.train(config, args.workdir, config_spec=args.config)
  except (loop.NonFiniteLossError, ckpt_lib.CheckpointWriteError, ckpt_lib.UnreadableCheckpointError,
          workdir_lib.WorkdirWriteError) as e:
    print(f"{PROG}: {e}", file=sys.stderr)  # not a usage error: exit 1
    return 1
  except (config_lib.ConfigError, ckpt_lib.CheckpointMismatchError, workdir_lib.WorkdirError,
          FileNotFoundError, ValueError) as e:
    return _error(str(e))
  except OSError as e:  # the filesystem failed outside the workdir's files (the data, a cache)
    print(f"{PROG}: {e}", file=sys.stderr)
    return 1
  if result["eval"]:
    ev = result["eval"]
    where = "preempted at" if result["preempted"] else "finished at"
    print(f"{where} step {result['step']}: error {ev['error']:.2f}% (top-5 {ev['top5_error']:.2f}%) on "
          f"{ev['num_examples']} images of {config.data.eval_split!r}", flush=True)
  return 0
