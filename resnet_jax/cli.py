"""`resnet-jax`: train, evaluate, list models, prepare datasets.

  resnet-jax train --config configs/cifar10_resnet20.py[:smoke] --workdir DIR [--config.x=v ...]
  resnet-jax eval --workdir DIR [--step N] [--split SPLIT] [--json]
  resnet-jax models [--filter SUBSTR]
  resnet-jax prepare cifar10 --source DIR [--data-dir TFDS_DIR]

`train` flags are absl flags (ml_collections `config_flags`: a `path.py:arg`
config file and `--config.field=value` overrides); multi-host runs add
`--coordinator_address`, `--num_processes` and `--process_id` where JAX cannot
auto-detect the cluster (it does on Cloud TPU and SLURM).
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import pathlib
import sys
from typing import List, Optional, Sequence

USAGE = """usage: resnet-jax {train,eval,models,prepare} ...

  train    --config configs/NAME.py[:smoke] --workdir DIR [--config.FIELD=VALUE ...]
  eval     --workdir DIR [--step N] [--split SPLIT] [--json]
  models   [--filter SUBSTR]
  prepare  NAME --source DIR [--data-dir TFDS_DIR]
"""


def _error(command: str, message: str) -> int:
  print(f"resnet-jax {command}: error: {message}", file=sys.stderr)
  return 2


def _config_path(argv: Sequence[str]) -> Optional[str]:
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return None


def _override_keys(argv: Sequence[str]) -> List[str]:
  keys = []
  for arg in argv:
    if arg.startswith("--config."):
      keys.append(arg[len("--config."):].split("=", 1)[0])
  return keys


def _literal(text: str):
  """A command-line value: a Python literal where it parses as one, else the string."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _split_model_overrides(argv: Sequence[str]):
  """Separates `--config.model.FIELD=VALUE` for ResNet fields the config file may not list.

  Config files name the network and only the fields they change, so any field of
  `resnet_jax.models.ResNet` (e.g. `shortcut`, `unit_order`) is accepted under `model.`.
  """
  from resnet_jax import models  # pylint: disable=g-import-not-at-top
  fields = set(models.field_names()) - {"name"}
  rest, overrides = [], {}
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    key = arg[len("--config.model."):] if arg.startswith("--config.model.") else None
    if key is not None and "=" not in key and key in fields and i + 1 < len(args):
      overrides[f"model.{key}"] = _literal(args[i + 1])
      i += 2
      continue
    if key is not None and "=" in key and key.split("=", 1)[0] in fields:
      k, v = key.split("=", 1)
      overrides[f"model.{k}"] = _literal(v)
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def train_main(argv: Sequence[str]) -> int:
  """`resnet-jax train`: absl flags + ml_collections config file with overrides."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  argv, model_overrides = _split_model_overrides(argv)
  path = _config_path(argv)
  if path:
    # Config files import their shared base as `configs.base`: put the folder holding
    # `configs/` on the path, wherever resnet-jax is run from.
    config_dir = pathlib.Path(path.split(":", 1)[0]).absolute().parent
    sys.path.insert(0, str(config_dir.parent))
  full_argv = ["resnet-jax train", *argv]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "experiment config file, `path.py[:arg]`",
                                  flag_values=fv, lock_config=True, sys_argv=full_argv)
  flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and config", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host without "
                      "TPU/SLURM auto-detection)", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "this process's index (multi-host)", flag_values=fv)
  try:
    fv(full_argv)
  except flags.Error as e:
    lines = [line for line in str(e).splitlines() if line.strip()]
    # config_flags embeds the config file's traceback: keep the flag and the final error.
    return _error("train", lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}")
  except (AttributeError, KeyError) as e:
    # An unknown `--config.x` key: say which, with near matches over all dotted fields.
    from resnet_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
    try:
      plain_argv = ["resnet-jax train", f"--config={path}"]
      fv2 = flags.FlagValues()
      config_flags.DEFINE_config_file("config", None, "", flag_values=fv2, sys_argv=plain_argv)
      fv2(plain_argv)
      config_lib.check_override_keys(fv2.config, _override_keys(argv))
    except config_lib.ConfigError as ce:
      return _error("train", str(ce))
    return _error("train", str(e).strip("'\""))
  except ValueError as e:
    return _error("train", str(e))
  if fv.config is None:
    return _error("train", "--config is required, e.g. --config configs/cifar10_resnet20.py")
  if not fv.workdir:
    return _error("train", "--workdir is required")
  config = fv.config
  if model_overrides:
    from resnet_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
    try:
      config = config_lib.apply_overrides(config, model_overrides)
    except ValueError as e:
      return _error("train", str(e))

  from resnet_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  try:
    mesh_lib.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
    result = loop.train(config, fv.workdir)
  except (config_lib.ConfigError, ckpt_lib.CheckpointMismatchError, FileNotFoundError, ValueError) as e:
    return _error("train", str(e))
  except loop.NonFiniteLossError as e:
    print(f"resnet-jax train: {e}", file=sys.stderr)
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
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--split", default=None, help="TFDS split (default: the run's data.eval_split)")
  parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
  args = parser.parse_args(argv)
  from resnet_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top
  try:
    result = loop.evaluate(args.workdir, step=args.step, split=args.split)
  except (ckpt_lib.CheckpointMismatchError, FileNotFoundError, ValueError) as e:
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


COMMANDS = {"train": train_main, "eval": eval_main, "models": models_main, "prepare": prepare_main}


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The `resnet-jax` program; `argv` None means the command line (sys.argv).

  From the command line, `train` and `eval` on a CPU-only machine re-execute once
  with jemalloc/tcmalloc preloaded when available (`resnet_jax.allocator`).
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
  if from_command_line and argv[0] in ("train", "eval"):
    from resnet_jax import allocator  # pylint: disable=g-import-not-at-top
    try:
      note = allocator.reexec_if_useful(argv)
    except allocator.AllocatorError as e:
      return _error(argv[0], str(e))
    if argv[0] == "train":
      print(note, flush=True)
  return command(argv[1:])


if __name__ == "__main__":
  sys.exit(main())
