"""`resnet-jax`: train, evaluate, benchmark, list models, prepare datasets.

  resnet-jax train --config cifar10_resnet20[:smoke] --workdir DIR [--config.x=v ...]
  resnet-jax eval --workdir DIR [--step N] [--split SPLIT] [--json]
  resnet-jax bench --model NAME | --config NAME [--batch N] [--dtype bfloat16] [--data real] ...
  resnet-jax models [--filter SUBSTR]
  resnet-jax prepare cifar10 --source DIR [--data-dir TFDS_DIR]

`train` flags are absl flags (ml_collections `config_flags`: a shipped config name
or a `path.py[:arg]` config file, and `--config.field=value` overrides); multi-host runs add
`--coordinator_address`, `--num_processes` and `--process_id` where JAX cannot
auto-detect the cluster (it does on Cloud TPU and SLURM).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional, Sequence

USAGE = """usage: resnet-jax {train,eval,bench,models,prepare} ...

  train    --config NAME[:smoke] | PATH.py[:arg] --workdir DIR [--config.FIELD=VALUE ...]
  eval     --workdir DIR [--step N|latest|best] [--split SPLIT] [--json]
  bench    --model NAME | --config NAME [--batch N] [--dtype bfloat16] [--data synthetic|real]
           [--steps-per-dispatch K ...] [--steps S] [--compare-minimal] [--json]
  models   [--filter SUBSTR]
  prepare  NAME --source DIR [--data-dir TFDS_DIR]
"""


def _error(command: str, message: str) -> int:
  print(f"resnet-jax {command}: error: {message}", file=sys.stderr)
  return 2


def _config_spec(argv: Sequence[str]) -> Optional[str]:
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return None


def _with_config_file(argv: Sequence[str], spec: str) -> List[str]:
  """`argv` with the `--config` value replaced by `spec` (a resolved file path)."""
  out, skip = [], False
  for i, arg in enumerate(argv):
    if skip:
      skip = False
      continue
    if arg == "--config" and i + 1 < len(argv):
      out.append(f"--config={spec}")
      skip = True
    elif arg.startswith("--config="):
      out.append(f"--config={spec}")
    else:
      out.append(arg)
  return out


def _join_override_values(argv: Sequence[str]) -> List[str]:
  """`--config.KEY VALUE` -> `--config.KEY=VALUE` (`train` takes no positional arguments).

  absl would otherwise read a `model.` field the config file does not list as a
  boolean flag and VALUE as a stray argument.
  """
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config.") and "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
      out.append(f"{arg}={argv[i + 1]}")
      i += 2
    else:
      out.append(arg)
      i += 1
  return out


def _override_keys(argv: Sequence[str]) -> List[str]:
  """The dotted keys of `--config.KEY[=VALUE]` arguments."""
  return [arg[len("--config."):].split("=", 1)[0] for arg in argv if arg.startswith("--config.")]


def train_main(argv: Sequence[str]) -> int:
  """`resnet-jax train`: absl flags, an ml_collections config file and `--config.*` overrides.

  `--config` takes a shipped config name (`cifar10_resnet20`, see `resnet_jax.configs`)
  or a file path, either with `:arg` (`:smoke`). Overrides are parsed by
  `ml_collections.config_flags`, typed by each field; any `ResNet` field may be set under
  `model.` whether or not the config file lists it.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from resnet_jax import configs  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top

  argv = _join_override_values(argv)
  spec = _config_spec(argv)
  if spec is None:
    return _error("train", "--config is required, e.g. --config cifar10_resnet20 (names: "
                  "`python -c 'import resnet_jax as rj; print(rj.configs.names())'`) or a path")
  try:
    file, arg = configs.resolve(spec)
    base_config = configs.load(spec)
    config_lib.check_override_keys(base_config, _override_keys(argv))
  except config_lib.ConfigError as e:
    return _error("train", str(e))
  argv = _with_config_file(argv, f"{file}:{arg}" if arg else str(file))
  full_argv = ["resnet-jax train", *argv]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "experiment config: a name or `path.py[:arg]`",
                                  flag_values=fv, lock_config=False, accept_new_attributes=True,
                                  sys_argv=full_argv)
  flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and config", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host without "
                      "TPU/SLURM auto-detection)", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "this process's index (multi-host)", flag_values=fv)
  try:
    fv(full_argv)
  except (flags.Error, TypeError, ValueError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # config_flags embeds the config file's traceback: keep the flag and the final error.
    return _error("train", lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}")
  if not fv.workdir:
    return _error("train", "--workdir is required")
  config = config_lib.parse_assignments(fv.config, [])  # lists -> tuples, as the files write them

  from resnet_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  try:
    mesh_lib.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
    result = loop.train(config, fv.workdir, config_spec=spec)
  except (config_lib.ConfigError, ckpt_lib.CheckpointMismatchError, workdir_lib.WorkdirError,
          FileNotFoundError, ValueError) as e:
    return _error("train", str(e))
  except (loop.NonFiniteLossError, ckpt_lib.CheckpointWriteError, ckpt_lib.UnreadableCheckpointError) as e:
    print(f"resnet-jax train: {e}", file=sys.stderr)  # not a usage error: exit 1
    return 1
  if result["eval"]:
    ev = result["eval"]
    where = "preempted at" if result["preempted"] else "finished at"
    print(f"{where} step {result['step']}: error {ev['error']:.2f}% "
          f"(top-5 {ev['top5_error']:.2f}%) on {ev['num_examples']} images of "
          f"{config.data.eval_split!r}", flush=True)
  return 0


def eval_main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="resnet-jax eval",
                                   description="Evaluate a checkpoint on the whole eval split.")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", default=None,
                      help="checkpoint step, 'latest' (default) or 'best' (lowest eval error)")
  parser.add_argument("--split", default=None, help="TFDS split (default: the run's data.eval_split)")
  parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
  args = parser.parse_args(argv)
  step = args.step
  if step is not None and step not in ("latest", "best"):
    if not step.isdigit():
      return _error("eval", f"--step {step!r} is not a step number, 'latest' or 'best'")
    step = int(step)
  from resnet_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  try:
    result = loop.evaluate(args.workdir, step=step, split=args.split,
                           log=lambda line: print(f"resnet-jax eval: {line}", file=sys.stderr, flush=True))
  except (ckpt_lib.CheckpointMismatchError, ckpt_lib.UnreadableCheckpointError, config_lib.ConfigError,
          workdir_lib.WorkdirError, FileNotFoundError, ValueError) as e:
    return _error("eval", str(e))
  if args.json:
    print(json.dumps(result, sort_keys=True))
  else:
    print(f"step {result['step']}: error {result['error']:.2f}%, top-5 error "
          f"{result['top5_error']:.2f}%, loss {result['loss']:.4f} on {result['num_examples']} "
          f"images of {result['split']!r}")
  return 0


def models_main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="resnet-jax models",
                                   description="Registered networks with parameters and multiply-adds.")
  parser.add_argument("--filter", default="", help="only names containing this string")
  args = parser.parse_args(argv)
  from resnet_jax import models  # pylint: disable=g-import-not-at-top
  print(f"{'name':<28} {'input':>9} {'params':>14} {'MACs/image':>16}")
  for name in models.names():
    if args.filter not in name:
      continue
    size = 32 if models.config(name).get("stem") == "cifar" else 224
    model = models.create(name)
    shape = (1, size, size, 3)
    params = models.count_params(models.abstract_variables(model, shape))
    print(f"{name:<28} {f'{size}x{size}':>9} {params:>14,} {models.flops(model, shape):>16,}", flush=True)
  return 0


def prepare_main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="resnet-jax prepare",
                                   description="Prepare a TFDS dataset (ArrayRecord) without TensorFlow.")
  parser.add_argument("name", help="dataset, e.g. cifar10, cifar100, imagenet2012")
  parser.add_argument("--source", default=None, help="official files (folder or archive); "
                      "omitted: download the official archive")
  parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR, "
                      "else ~/tensorflow_datasets)")
  args = parser.parse_args(argv)
  import resnet_jax.data as rjd  # pylint: disable=g-import-not-at-top
  try:
    path = rjd.prepare(args.name, args.source, args.data_dir)
  except (FileNotFoundError, ValueError) as e:
    return _error("prepare", str(e))
  print(f"prepared {args.name} in {path}")
  return 0


def bench_main(argv: Sequence[str]) -> int:
  from resnet_jax import bench  # pylint: disable=g-import-not-at-top
  return bench.main(argv)


COMMANDS = {"train": train_main, "eval": eval_main, "bench": bench_main, "models": models_main,
            "prepare": prepare_main}


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The `resnet-jax` program; `argv` None means the command line (sys.argv).

  From the command line, `train`, `eval` and `bench` on a CPU-only machine re-execute
  once with jemalloc/tcmalloc preloaded when available (`resnet_jax.allocator`).
  """
  from_command_line = argv is None
  argv = list(sys.argv[1:] if argv is None else argv)
  logging.getLogger().setLevel(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if not argv or argv[0] in ("-h", "--help"):
    print(USAGE)
    return 0 if argv else 2
  command = COMMANDS.get(argv[0])
  if command is None:
    return _error(argv[0], f"unknown command; valid commands: {', '.join(COMMANDS)}")
  if from_command_line and argv[0] in ("train", "eval", "bench"):
    from resnet_jax import allocator  # pylint: disable=g-import-not-at-top
    try:
      note = allocator.reexec_if_useful(argv)
    except allocator.AllocatorError as e:
      return _error(argv[0], str(e))
    if argv[0] in ("train", "bench"):
      print(note, flush=True)
  try:
    return command(argv[1:])
  except KeyboardInterrupt:  # Ctrl-C before training started, or a second Ctrl-C
    print(f"resnet-jax {argv[0]}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
