"""He et al. 2016 ("Identity Mappings"): activation placement and pre-activation.

  --table 2 (default): Table 2 / Fig. 4, the five unit orders on ResNet-110 (basic
                       units) and ResNet-164 (bottleneck units), CIFAR-10.
  --table 3:           Table 3, original vs full pre-activation ResNet-164 / ResNet-1001
                       on CIFAR-10 and CIFAR-100 (CIFAR-100 must be prepared:
                       `resnet-jax prepare cifar100 --source DIR`).

  python experiments/unit_orders.py --workdir runs/unit_orders
  python experiments/unit_orders.py --smoke
"""
from __future__ import annotations

from resnet_jax import paper
from resnet_jax.reproduce import Comparison, main_guard, parser, run
from resnet_jax.models import UNIT_ORDERS


def main() -> None:
  p = parser(__doc__, "runs/unit_orders")
  p.add_argument("--table", type=int, choices=(2, 3), default=2)
  p.add_argument("--datasets", nargs="+", default=["cifar10", "cifar100"], help="for --table 3")
  args = p.parse_args()
  if args.table == 2:
    groups = [
        Comparison(net, config, {order: {"model.unit_order": order} for order in UNIT_ORDERS},
              {order: paper.UNIT_ORDERS[(model, order)] for order in UNIT_ORDERS})
        for net, config, model in (("resnet110", "cifar10_resnet110", "cifar_resnet110"),
                                   ("resnet164", "cifar10_preact_resnet164", "cifar_preact_resnet164"))]
    title = "Unit orders on CIFAR-10 (He et al. 2016, Table 2 / Fig. 4)"
  else:
    groups = []
    for dataset in (["cifar10"] if args.smoke else args.datasets):
      for depth in ((164,) if args.smoke else (164, 1001)):
        model = f"cifar_preact_resnet{depth}"
        orders = ("original", "full_preact")
        groups.append(Comparison(f"{dataset}_resnet{depth}", f"{dataset}_preact_resnet{depth}",
                            {o: {"model.unit_order": o} for o in orders},
                            {o: paper.PREACT[(dataset, model, o)] for o in orders}))
    title = "Original vs pre-activation units (He et al. 2016, Table 3)"
  run(f"unit_orders_table{args.table}", groups, args, title,
      notes=["paper: median of 5 runs on the 10k test set"])


if __name__ == "__main__":
  main_guard(main)
