"""`resnet-jax analyze`: the papers' analyses of a config at initialisation or a workdir's checkpoints.

  resnet-jax analyze --config cifar10_resnet56 --config cifar10_plain56 --out DIR
  resnet-jax analyze --workdir RUN --step all --with-init --out DIR [--images 1000]

Writes DIR/analysis.json (every number, what was measured, commit, device and wall time) and one
figure per analysis (gradient_highway.png, shattered_gradients.png, layer_responses.png), one
line per network; `resnet_jax.analysis` says what each measures.
"""
from __future__ import annotations

import sys
from typing import Sequence

from resnet_jax.analysis import run
from resnet_jax.commands import ArgumentParser, UsageError

PROG = "resnet-jax analyze"


def parser() -> ArgumentParser:
  p = ArgumentParser(prog=PROG, description="He et al. 2015 Fig. 7 (layer responses), the gradient highway (He "
                     "et al. 2016, Eq. 5) and shattered gradients (Balduzzi et al. 2017), as JSON and figures.")
  p.add_argument("--config", action="append", default=[], help="a config (NAME[:smoke] or PATH.py), analysed "
                 "at initialisation; repeat for one line per config")
  p.add_argument("--label", action="append", default=[], help="the legend of each --config, in order")
  p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every --config")
  p.add_argument("--workdir", action="append", default=[], help="a training run, analysed at its checkpoints")
  p.add_argument("--step", default="latest", help="the checkpoints of each --workdir: latest (default), best, "
                 "all, or a step")
  p.add_argument("--with-init", action="store_true", help="also each --workdir's config at initialisation")
  p.add_argument("--out", required=True, help="folder for analysis.json and the figures")
  p.add_argument("--analysis", nargs="+", default=list(run.ANALYSES), choices=run.ANALYSES)
  p.add_argument("--images", type=int, default=64, help="the first N images of the eval split (default 64)")
  p.add_argument("--split", default=None, help="the split the images come from (default: the config's eval split)")
  p.add_argument("--data-dir", default=None, help="TFDS data dir of the dataset")
  p.add_argument("--points", type=int, default=32, help="inputs on each line between two images (shattered)")
  p.add_argument("--lines", type=int, default=2, help="lines, each between two images (shattered)")
  return p


def main(argv: Sequence[str]) -> int:
  args = parser().parse_args(argv)
  if not args.config and not args.workdir:
    raise UsageError("give at least one --config or --workdir")
  if args.label and len(args.label) != len(args.config):
    raise UsageError(f"{len(args.label)} --label for {len(args.config)} --config: give one per config, or none")
  for flag, value, least in (("--images", args.images, 1), ("--points", args.points, 2), ("--lines", args.lines, 1)):
    if value < least:
      raise UsageError(f"{flag} {value}: must be at least {least}")
  log = lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True)
  subjects = [run.subject_from_config(spec, label, args.images, args.split, args.data_dir, args.set)
              for spec, label in zip(args.config, args.label or args.config)]
  for workdir in args.workdir:
    subjects += run.subjects_from_workdir(workdir, args.step, args.images, args.split, args.data_dir, args.with_init)
  report = run.analyze(subjects, args.out, args.analysis, args.points, args.lines, log=log)
  for analysis, result in report["results"].items():
    print(f"{args.out}/{result['figure']}: {analysis} of {', '.join(result['by_subject'])}")
  print(f"{args.out}/analysis.json")
  return 0
