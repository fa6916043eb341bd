"""Issue 35, item 4: the papers' analyses of signal and gradient, measured on this machine.

Three figure sets, each one `rj.analysis.analyze` call (analysis.json with every number, the
commit, device and wall time, and one figure per analysis, one line per network):

  depth     at initialisation: plain-20/56/110 and ResNet-20/56/110 (He et al. 2015's CIFAR nets;
            plain-110 is ResNet-110 without shortcuts, as the paper's plain nets are its ResNets'
            stacks without them)
  variants  at initialisation: ResNet-110, plain-110, and the identity-at-initialisation units
            SkipInit and ReZero (no normalisation, as in De & Smith 2020 and Bachlechner et al. 2020)
            and Fixup ResNet-110 (Zhang et al. 2019)
  trained   trained networks, evaluation-mode BatchNorm (He et al. 2015 Fig. 7 is measured on
            trained nets): plain-20 and ResNet-20 (options A, B) after the same 2,000-step reduced
            recipe, and the full-schedule ResNet-20 (64k steps) committed in
            experiments/results/cifar10_resnet20_full

  python experiments/skip_analysis.py depth    --data-dir TFDS_DIR --out experiments/results/analysis/init_depth
  python experiments/skip_analysis.py variants --data-dir TFDS_DIR --out experiments/results/analysis/init_variants
  python experiments/skip_analysis.py trained  --data-dir TFDS_DIR --out experiments/results/analysis/trained \\
      --workdir "plain-20 (2k steps)=RUN" --workdir "ResNet-20 A (2k steps)=RUN" ...

Stochastic-depth ResNet-110 is not a line of its own: the analyses take the whole network (every
branch kept), which at initialisation is ResNet-110's, weight for weight.
"""
from __future__ import annotations

import argparse
import sys
from typing import List

from resnet_jax import errors
from resnet_jax.analysis import run

DEPTH = [("plain-20", "cifar10_plain20", {}), ("plain-56", "cifar10_plain56", {}),
         ("plain-110", "cifar10_resnet110", {"model.shortcut": "none"}),
         ("ResNet-20", "cifar10_resnet20", {}), ("ResNet-56", "cifar10_resnet56", {}),
         ("ResNet-110", "cifar10_resnet110", {})]
VARIANTS = [("ResNet-110", "cifar10_resnet110", {}),
            ("plain-110", "cifar10_resnet110", {"model.shortcut": "none"}),
            ("SkipInit-110 (no BN)", "cifar10_resnet110", {"model.identity_init": "skipinit", "model.norm": "none"}),
            ("ReZero-110 (no BN)", "cifar10_resnet110", {"model.identity_init": "rezero", "model.norm": "none"}),
            ("Fixup-110", "cifar10_fixup_resnet110", {})]


def main(argv: List[str]) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("set", choices=("depth", "variants", "trained"))
  p.add_argument("--data-dir", required=True, help="TFDS data dir with cifar10 prepared")
  p.add_argument("--out", required=True)
  p.add_argument("--workdir", action="append", default=[], metavar="LABEL=DIR", help="trained: a run to analyse")
  p.add_argument("--images", type=int, default=None, help="default: 64 at initialisation, 1000 trained")
  p.add_argument("--split", default="test")
  p.add_argument("--analysis", nargs="+", default=list(run.ANALYSES), choices=run.ANALYSES)
  args = p.parse_args(argv)
  log = lambda line: print(line, file=sys.stderr, flush=True)
  if args.set in ("depth", "variants"):
    images = args.images or 64
    subjects = [run.subject_from_config(spec, label, images, args.split, args.data_dir, overrides)
                for label, spec, overrides in (DEPTH if args.set == "depth" else VARIANTS)]
  else:
    if not args.workdir:
      raise errors.InputError("trained: give --workdir LABEL=DIR for each run")
    subjects = []
    for item in args.workdir:
      label, _, workdir = item.partition("=")
      for subject in run.subjects_from_workdir(workdir, "latest", args.images or 1000, args.split, args.data_dir):
        subject.label = label
        subjects.append(subject)
  run.analyze(subjects, args.out, args.analysis, log=log)
  print(f"{args.out}/analysis.json")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv[1:]))
  except errors.InputError as e:
    print(f"skip_analysis: error: {e}", file=sys.stderr)
    sys.exit(2)
