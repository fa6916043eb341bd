"""He et al. 2015, Table 3 analogue on CIFAR-10: shortcut options A / B / C.

Option A: zero-padding identity shortcuts; B: projections where dimensions
increase; C: projections on every shortcut. The paper ran this on ImageNet
ResNet-34 (Table 3: 25.03 / 24.52 / 24.19 % top-1, 10-crop); on CIFAR it reports
no such table, so the paper column stays empty and the ImageNet ordering is the
reference.

  python experiments/cifar_shortcuts.py --workdir runs/cifar_shortcuts [--model cifar10_resnet32]
  python experiments/cifar_shortcuts.py --smoke
"""
from __future__ import annotations

from resnet_jax.reproduce import Comparison, main_guard, parser, run


def main() -> None:
  p = parser(__doc__, "runs/cifar_shortcuts")
  p.add_argument("--model", default="cifar10_resnet32", help="base config (a CIFAR ResNet)")
  args = p.parse_args()
  variants = {f"option_{o}": {"model.shortcut": o} for o in ("A", "B", "C")}
  run("cifar_shortcuts", [Comparison("shortcuts", args.model, variants, {}, baseline="option_A")], args,
      "Shortcut options A/B/C on CIFAR-10 (He et al. 2015, Table 3 analogue)",
      notes=["paper reference (ImageNet ResNet-34, 10-crop top-1): A 25.03, B 24.52, C 24.19"])


if __name__ == "__main__":
  main_guard(main)
