"""The command lines of `train` and `eval`, parsed without the engine (argparse alone).

`resnet_jax.cli` checks them before it re-executes with a faster allocator
(`check_usage`), so that a usage error is one line at once, not after the allocator's line
and seconds of imports; the commands parse them again, with the engine, in their own modules.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from resnet_jax.commands import ArgumentParser, UsageError

TRAIN = "resnet-jax train"
EVAL = "resnet-jax eval"
PACK_CHOICES = ("auto", "on", "off")
CONFIG_PREFIX, NO_CONFIG_PREFIX = "--config.", "--noconfig."


def train_parser() -> ArgumentParser:
  p = ArgumentParser(
      prog=TRAIN, description="Train a config in a workdir, resuming from its newest checkpoint.",
      epilog="Any config field can be set with --config.FIELD=VALUE (e.g. --config.optimizer.learning_rate=0.05); "
             "any resnet_jax.models.ResNet field under --config.model.FIELD. The fields are listed below.",
      add_help=False)
  p.add_argument("-h", "--help", action="store_true", help="show this help, with the config's fields, and exit")
  p.add_argument("--config", help="a shipped config name (cifar10_resnet20, NAME:smoke), PATH.py[:arg], or a "
                 "run's saved WORKDIR/config.json")
  p.add_argument("--workdir", help="directory for checkpoints, metrics and the config (with --seeds: "
                 "one run per seed in WORKDIR/seed<k>)")
  p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                 help="train one run per seed (replaces config.seed), packed in one program when --pack says so")
  p.add_argument("--pack", choices=PACK_CHOICES, default="auto",
                 help="with --seeds: on trains the runs in one program (the same kernels, R times the examples), "
                      "off one after another, auto (default) packs on an accelerator and not on a CPU")
  p.add_argument("--time-limit", default=None, metavar="DURATION",
                 help="save and stop at this wall time (90s, 10m, 1h30m); the same command again continues")
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


def parse_train(argv: Sequence[str]):
  """(args, overrides, unrecognised arguments) of a `train` command line; `UsageError` for a
  missing --config or --workdir, a bad flag value and a seed given twice (not with --help)."""
  overrides, rest = split_overrides(argv)
  args, unknown = train_parser().parse_known_args(rest)
  if args.help:
    return args, overrides, unknown
  if args.config is None:
    raise UsageError("--config is required, e.g. --config cifar10_resnet20 (names: "
                     "`python -c 'import resnet_jax as rj; print(rj.configs.names())'`) or a path")
  if not args.workdir:
    raise UsageError("--workdir is required")
  if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
    raise UsageError(f"--seeds {' '.join(map(str, args.seeds))} names a seed twice")
  return args, overrides, unknown


def eval_parser() -> ArgumentParser:
  p = ArgumentParser(prog=EVAL, description="Evaluate a checkpoint on the whole eval split.")
  p.add_argument("--workdir", required=True, help="the --workdir of a `resnet-jax train` run (local or gs://)")
  p.add_argument("--step", default=None, help="checkpoint step, 'latest' (default) or 'best' (lowest eval error)")
  p.add_argument("--split", default=None, help="TFDS split (default: the run's data.eval_split)")
  p.add_argument("--data-dir", default=None, help="TFDS data dir of the dataset (default: the run's data.data_dir "
                 "where it exists here, else $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
  p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
  return p


def parse_eval(argv: Sequence[str]):
  """(args, step: None, "latest", "best" or a number) of an `eval` command line, or `UsageError`."""
  args = eval_parser().parse_args(argv)
  step = args.step
  if step is not None and step not in ("latest", "best"):
    if not step.isdigit():
      raise UsageError(f"--step {step!r} is not a step number, 'latest' or 'best'")
    step = int(step)
  return args, step


def check_usage(command: str, argv: Sequence[str]) -> None:
  """Raises `UsageError` for a command line of `command` that its command would refuse."""
  if command == "train":
    _, _, unknown = parse_train(argv)
    if unknown:
      raise UsageError(f"unrecognised arguments: {' '.join(unknown)} (see {TRAIN} --help)")
  elif command == "eval":
    parse_eval(argv)
