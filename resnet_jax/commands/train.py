"""`resnet-jax train --config NAME[:smoke] | PATH.py[:arg] | WORKDIR/config.json --workdir DIR [--config.FIELD=VALUE ...]`.

The config is loaded once (`rj.configs.load`) and every `--config.FIELD=VALUE` applied by the
one override parser (`resnet_jax.train.config.parse_assignments`: ml_collections'
`config_flags`, typed by each field). `--config.FIELD VALUE`, a bare `--config.FLAG` (true)
and `--noconfig.FLAG` (false) are accepted as absl writes them. Multi-host runs add
`--coordinator_address`, `--num_processes` and `--process_id` where JAX cannot auto-detect
the cluster (it does on Cloud TPU and SLURM).
"""
from __future__ import annotations

import sys
import textwrap
import time
from typing import List, Optional, Sequence

from resnet_jax import configs
from resnet_jax import models
from resnet_jax.commands import UsageError, arguments
from resnet_jax.configs import base
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.storage.workdir import Workdir
from resnet_jax.train import config as config_lib
from resnet_jax.train import loop
from resnet_jax.train import packing
from resnet_jax.train import report

PROG = arguments.TRAIN
parser, split_overrides = arguments.train_parser, arguments.split_overrides


def config_fields(spec: Optional[str], overrides: Sequence[str] = ()) -> str:
  """The fields of config `spec` (with `overrides`) and their values, for `--help`; without
  `spec`, the defaults every shipped config starts from."""
  config = configs.load(spec, list(overrides)) if spec else base.base_config()
  lines = [f"config fields of {spec or 'resnet_jax/configs/base.py (every config starts from these)'}, "
           "each settable with --config.FIELD=VALUE:"]
  for key in config_lib.dotted_keys(config):
    node = config
    for part in key.split("."):
      node = node[part]
    lines.append(f"  {key} = {node!r}")
  listed = {k[len("model."):] for k in config_lib.dotted_keys(config) if k.startswith("model.")}
  settable = [f for f in models.field_names() if f not in config_lib.ENGINE_MODEL_FIELDS and f not in listed]
  lines += textwrap.wrap("and any resnet_jax.models.ResNet field as --config.model.FIELD: " + ", ".join(settable),
                         width=100, initial_indent="", subsequent_indent="  ")
  return "\n".join(lines)


def parse(argv: Sequence[str]):
  """(args, config) for the command line; raises `UsageError` or `ConfigError` in one line.

  With `--help`, `config` is None (`main` prints the help and the config's fields).
  """
  args, overrides, unknown = arguments.parse_train(argv)
  if args.help:
    return args, None
  config = configs.load(args.config, overrides)  # the flags the user wrote first, then the leftovers
  if unknown:
    raise UsageError(f"unrecognised arguments: {' '.join(unknown)} (see {PROG} --help)")
  if args.time_limit is not None:
    try:
      args.time_limit = report.parse_duration(args.time_limit)
    except ValueError as e:
      raise UsageError(f"--time-limit: {e}") from None
  return args, config


def _final_line(result: loop.RunResult, split: str, label: str = "") -> str:
  ev = result.eval
  where = f"{result.stopped} at" if result.preempted else "finished at"
  return (f"{label}{where} step {result.step}: error {ev['error']:.2f}% (top-5 {ev['top5_error']:.2f}%) on "
          f"{ev['num_examples']} images of {split!r}")


def _train_seeds(args, config) -> list:
  """One run per `--seeds` seed in WORKDIR/seed<k>: packed in one program, or one after another."""
  seeds = list(args.seeds)
  configs = [config_lib.apply_overrides(config, {"seed": s}) for s in seeds]
  workdirs = [Workdir(args.workdir) / f"seed{s}" for s in seeds]  # gs:// kept whole
  pack = args.pack == "on" or (args.pack == "auto" and packing.packs_by_default())
  how = ("packed in one program" if pack else
         "one after another (--pack off)" if args.pack == "off" else "one after another (a CPU: packing buys nothing)")
  print(f"{len(seeds)} runs (seeds {' '.join(map(str, seeds))}) in {args.workdir}/seed<k>: {how}", flush=True)
  if pack:
    return loop.train_packed(configs, workdirs, time_limit=args.time_limit)
  deadline = None if args.time_limit is None else time.monotonic() + args.time_limit
  results = []
  for c, w in zip(configs, workdirs):
    left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    try:
      results.append(loop.train(c, w, config_spec=args.config, time_limit=left))
    except loop.NonFiniteLossError as e:  # one bad run does not sink the others
      print(f"[{w.name}] {e}", flush=True)
      results.append(loop.RunResult(step=-1, workdir=str(w), error=e))
    if results[-1].stopped:
      break
  return results


def _report(args, config, results: List[loop.RunResult]) -> int:
  """The final line of each run, and how many finished; exit 1 if a run diverged."""
  labels = [f"[seed{s}] " for s in args.seeds] if args.seeds else [""]
  for label, result in zip(labels, results):
    if result.error is not None or result.was_finished:  # a finished run said so already
      continue
    if result.stopped == report.TIME_LIMIT:
      print(f"{label}stopped at step {result.step} (time limit)", flush=True)
    elif result.eval:
      print(_final_line(result, config.data.eval_split, label), flush=True)
  finished = sum(1 for r in results if r.finished and r.eval)
  total = len(labels)  # one run stopped early already said how to continue ("saved step N ...")
  if total > 1 and (finished < total and any(r.stopped for r in results) or len(results) < total):
    print(f"{finished} of {total} runs finished; run the same command again to continue", flush=True)
  failed = [r.error for r in results if r.error is not None]
  for error in failed:
    print(f"{PROG}: {error}", file=sys.stderr)
  return 1 if failed else 0


def main(argv: Sequence[str]) -> int:
  args, config = parse(argv)
  if args.help:
    fields = config_fields(args.config, split_overrides(argv)[0])
    print(parser().format_help())
    print(fields)
    return 0
  mesh_lib.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  if args.seeds:
    results = _train_seeds(args, config)
  else:
    results = [loop.train(config, args.workdir, config_spec=args.config, time_limit=args.time_limit)]
  return _report(args, config, results)
