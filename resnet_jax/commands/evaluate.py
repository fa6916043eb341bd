"""`resnet-jax eval --workdir DIR [--step N|latest|best] [--split SPLIT] [--data-dir DIR] [--json]`."""
from __future__ import annotations

import json
import sys
from typing import Sequence

from resnet_jax.commands import ArgumentParser, UsageError
from resnet_jax.train import load

PROG = "resnet-jax eval"


def parser() -> ArgumentParser:
  p = ArgumentParser(prog=PROG, description="Evaluate a checkpoint on the whole eval split.")
  p.add_argument("--workdir", required=True)
  p.add_argument("--step", default=None, help="checkpoint step, 'latest' (default) or 'best' (lowest eval error)")
  p.add_argument("--split", default=None, help="TFDS split (default: the run's data.eval_split)")
  p.add_argument("--data-dir", default=None, help="TFDS data dir of the dataset (default: the run's data.data_dir "
                 "where it exists here, else $TFDS_DATA_DIR)")
  p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
  return p


def main(argv: Sequence[str]) -> int:
  args = parser().parse_args(argv)
  step = args.step
  if step is not None and step not in ("latest", "best"):
    if not step.isdigit():
      raise UsageError(f"--step {step!r} is not a step number, 'latest' or 'best'")
    step = int(step)
  result = load.evaluate(args.workdir, step=step, split=args.split, data_dir=args.data_dir,
                         log=lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True))
  if args.json:
    print(json.dumps(result, sort_keys=True))
  else:
    print(f"step {result['step']}: error {result['error']:.2f}%, top-5 error {result['top5_error']:.2f}%, "
          f"loss {result['loss']:.4f} on {result['num_examples']} images of {result['split']!r}")
  return 0
