"""`resnet-jax`: train, evaluate, benchmark, list models, prepare datasets.

  resnet-jax train --config cifar10_resnet20[:smoke] --workdir DIR [--config.x=v ...] [--seeds ...]
  resnet-jax eval --workdir DIR [--step N] [--split SPLIT] [--data-dir DIR] [--json]
  resnet-jax bench --model NAME | --config NAME [--batch N] [--dtype bfloat16] [--data real] ...
  resnet-jax models [--filter SUBSTR]
  resnet-jax prepare cifar10 [--source DIR] [--data-dir TFDS_DIR]
  resnet-jax analyze --config NAME [--config NAME ...] | --workdir DIR [--step all] --out DIR

Each command lives in its own module (`resnet_jax.commands`, `resnet_jax.bench`), imported
only for the command that runs (the engine's TFDS, Grain and Orbax take seconds to import)
and only after `main` has decided whether to re-execute with a faster allocator
(`resnet_jax.runtime.allocator`).
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Optional, Sequence

from resnet_jax import errors
from resnet_jax.commands import arguments
from resnet_jax.runtime import allocator

USAGE = """usage: resnet-jax {train,eval,bench,models,prepare,analyze} ...

  train    --config NAME[:smoke] | PATH.py[:arg] | WORKDIR/config.json --workdir DIR [--config.FIELD=VALUE ...]
           [--seeds SEED ...] [--pack auto|on|off] [--time-limit DURATION]
  eval     --workdir DIR [--step N|latest|best] [--split SPLIT] [--data-dir DIR] [--json]
  bench    --model NAME | --config NAME [--batch N] [--dtype bfloat16] [--data synthetic|real]
           [--steps-per-dispatch K ...] [--steps S] [--compare-minimal] [--json]
  models   [--filter SUBSTR]
  prepare  NAME [--source DIR_OR_ARCHIVE] [--data-dir TFDS_DIR] [--allow-partial]
  analyze  --config NAME[:smoke] ... | --workdir DIR [--step N|latest|best|all] [--with-init] --out DIR
           [--analysis highway shattered responses] [--images N] [--split SPLIT] [--data-dir DIR]

`resnet-jax COMMAND --help` describes a command's flags.
"""

# command -> the module whose `main(argv)` runs it
COMMANDS = {"train": "resnet_jax.commands.train", "eval": "resnet_jax.commands.evaluate",
            "bench": "resnet_jax.bench.command", "models": "resnet_jax.commands.models",
            "prepare": "resnet_jax.commands.prepare", "analyze": "resnet_jax.commands.analyze"}
# Commands that run JAX computations, and so profit from jemalloc/tcmalloc on a CPU.
_ALLOCATOR_COMMANDS = ("train", "eval", "bench", "analyze")


def _error(command: str, message: str) -> int:
  print(f"resnet-jax {command}: error: {message}", file=sys.stderr)
  return 2


def _fault(command: str, error: errors.Error) -> int:
  """The one place a command's documented fault becomes its message and exit code: "error:"
  before input the user can correct (exit 2), the message alone for a fault of the run (1)."""
  if error.exit_code == 2:
    return _error(command, str(error))
  print(f"resnet-jax {command}: {error}", file=sys.stderr)
  errors.end_if_it_must(error)
  return error.exit_code


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The `resnet-jax` program; `argv` None means the command line (sys.argv).

  From the command line, `train`, `eval` and `bench` on a CPU-only machine re-execute
  once with jemalloc/tcmalloc preloaded when available (`resnet_jax.runtime.allocator`);
  `train` and `bench` say so in one line, or how to install it, and print nothing about the
  allocator when nothing changed.
  """
  from_command_line = argv is None
  argv = list(sys.argv[1:] if argv is None else argv)
  logging.getLogger().setLevel(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if not argv or argv[0] in ("-h", "--help"):
    print(USAGE)
    return 0 if argv else 2
  if argv[0] not in COMMANDS:
    return _error(argv[0], f"unknown command; valid commands: {', '.join(COMMANDS)}")
  asks_help = any(a in ("-h", "--help") for a in argv[1:])
  if from_command_line and argv[0] in _ALLOCATOR_COMMANDS and not asks_help:
    try:
      arguments.check_usage(argv[0], argv[1:])  # a usage error at once, not after re-executing
      note = allocator.reexec_if_useful(argv)
    except errors.Error as e:
      return _fault(argv[0], e)
    if note and argv[0] in ("train", "bench"):
      print(note, flush=True)
  try:
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
  except errors.Error as e:
    return _fault(argv[0], e)
  except OSError as e:  # the filesystem failed outside resnet_jax's own files (the data, a cache)
    print(f"resnet-jax {argv[0]}: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:  # Ctrl-C before training started, or a second Ctrl-C
    print(f"resnet-jax {argv[0]}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
