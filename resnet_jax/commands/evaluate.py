"""`resnet-jax eval --workdir DIR [--step N|latest|best] [--split SPLIT] [--data-dir DIR] [--json]`."""
from __future__ import annotations

import json
import sys
from typing import Sequence

from resnet_jax.commands import arguments
from resnet_jax.train import load

PROG = arguments.EVAL


def main(argv: Sequence[str]) -> int:
  args, step = arguments.parse_eval(argv)
  result = load.evaluate(args.workdir, step=step, split=args.split, data_dir=args.data_dir,
                         log=lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True))
  if args.json:
    print(json.dumps(result, sort_keys=True))
  else:
    print(f"step {result['step']}: error {result['error']:.2f}%, top-5 error {result['top5_error']:.2f}%, "
          f"loss {result['loss']:.4f} on {result['num_examples']} images of {result['split']!r}")
  return 0
