"""Xie et al. 2017 (ResNeXt) on CIFAR.

  --study table7 (default): Table 7, ResNeXt-29 8×64d and 16×64d on CIFAR-10 / CIFAR-100
                            (300 epochs, batch 128, wd 5e-4).
  --study cardinality:      the cardinality-vs-width trade-off of Table 3 (C×d at about
                            equal complexity: 1×64d, 2×40d, 4×24d, 8×14d, 32×4d, the pairs
                            of Table 2) on ResNeXt-29, at reduced scale: `--width-divisor`
                            narrows every stage (default 4) and `--scale` shortens training.

  python experiments/resnext_cifar.py --workdir runs/resnext --datasets cifar10
  python experiments/resnext_cifar.py --study cardinality --scale 0.1
  python experiments/resnext_cifar.py --smoke
"""
from __future__ import annotations

from resnet_jax import paper
from resnet_jax.reproduce import Comparison, main_guard, parser, run

# Xie et al. 2017, Table 2: bottleneck width d for each cardinality C at ~constant complexity.
CARDINALITY_WIDTH = ((1, 64), (2, 40), (4, 24), (8, 14), (32, 4))
# ImageNet ResNeXt-50 top-1 for each setting (Table 3): the trend the CIFAR study should echo.
IMAGENET_TABLE3 = {1: 23.9, 2: 23.0, 4: 22.6, 8: 22.3, 32: 22.2}


def main() -> None:
  p = parser(__doc__, "runs/resnext_cifar")
  p.add_argument("--study", choices=("table7", "cardinality"), default="table7")
  p.add_argument("--datasets", nargs="+", default=["cifar10", "cifar100"])
  p.add_argument("--width-divisor", type=int, default=4, help="cardinality study: divide stage widths by this")
  args = p.parse_args()
  if args.study == "table7":
    groups = []
    for dataset in (["cifar10"] if args.smoke else args.datasets):
      nets = ("resnext29_8x64d",) if args.smoke else ("resnext29_8x64d", "resnext29_16x64d")
      groups.append(Comparison(dataset, f"{dataset}_resnext29_8x64d",
                          {n: {"config": f"{dataset}_{n}"} for n in nets},
                          {n: paper.RESNEXT_CIFAR[(dataset, n)] for n in nets}))
    run("resnext_table7", groups, args, "ResNeXt-29 on CIFAR (Xie et al. 2017, Table 7)",
        notes=["paper: average of 10 runs on the 10k test set"])
    return
  k = max(1, args.width_divisor)
  pairs = CARDINALITY_WIDTH[::2] if args.smoke else CARDINALITY_WIDTH
  variants = {}
  for c, d in pairs:
    fields = {"model.cardinality": c, "model.bottleneck_width": d}
    if not args.smoke:
      fields.update({"model.stage_widths": (64 // k, 128 // k, 256 // k), "model.stem_width": 64 // k,
                     "model.bottleneck_width": max(1, d // k)})
    variants[f"{c}x{d}d"] = fields
  run("resnext_cardinality", [Comparison("cardinality", "cifar10_resnext29_8x64d", variants, {})], args,
      "Cardinality vs width on CIFAR-10 at reduced scale (Xie et al. 2017, Tables 2-3)",
      notes=[f"widths divided by {k}; ImageNet ResNeXt-50 top-1 for the same C×d (Table 3): "
             + ", ".join(f"{c}×{d}d {IMAGENET_TABLE3[c]}" for c, d in CARDINALITY_WIDTH)])


if __name__ == "__main__":
  main_guard(main)
