"""He et al. 2015, Table 6 / Fig. 6: plain vs residual networks of growing depth on CIFAR-10.

The plain nets get worse with depth (the degradation problem); the ResNets get better.

  python experiments/cifar_depth.py --workdir runs/cifar_depth                 # paper schedule, 64k iterations
  python experiments/cifar_depth.py --workdir runs/cifar_depth --steps 8000    # reduced budget
  python experiments/cifar_depth.py --smoke                                    # seconds on CPU
"""
from __future__ import annotations

from resnet_jax import paper
from resnet_jax.reproduce import Comparison, main_guard, parser, run

PLAIN = (20, 32, 44, 56)
RESNET = (20, 32, 44, 56, 110)


def main() -> None:
  p = parser(__doc__, "runs/cifar_depth")
  p.add_argument("--depths", type=int, nargs="+", default=None,
                 help=f"depths to run (plain: {PLAIN}, ResNet: {RESNET} and 1202)")
  p.add_argument("--with-1202", action="store_true", help="also train ResNet-1202 (19.4M parameters)")
  args = p.parse_args()
  resnets = RESNET + ((1202,) if args.with_1202 else ())
  if args.depths:
    resnets = tuple(d for d in resnets + (1202,) if d in args.depths)
  plains = tuple(d for d in PLAIN if not args.depths or d in args.depths)
  if args.smoke and not args.depths:
    plains, resnets = (20, 56), (20, 56)
  groups = [
      Comparison("plain", "cifar10_plain20", {f"plain{d}": {"config": f"cifar10_plain{d}"} for d in plains},
            {f"plain{d}": paper.CIFAR10_DEPTH[f"cifar_plain{d}"] for d in plains}),
      Comparison("resnet", "cifar10_resnet20", {f"resnet{d}": {"config": f"cifar10_resnet{d}"} for d in resnets},
            {f"resnet{d}": paper.CIFAR10_DEPTH[f"cifar_resnet{d}"] for d in resnets}),
  ]
  run("cifar_depth", groups, args, "CIFAR-10 plain vs ResNet (He et al. 2015, Table 6 / Fig. 6)",
      notes=["the paper's error is on the 10,000-image test set, trained on 45k; it gives plain-net "
             "errors only as curves (Fig. 6)"])


if __name__ == "__main__":
  main_guard(main)
