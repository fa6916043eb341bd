"""He et al. 2016 ("Identity Mappings"), Table 1: shortcut variants on ResNet-110, CIFAR-10.

  python experiments/identity_shortcuts.py --workdir runs/identity_shortcuts --seeds 0 1 2 3 4
  python experiments/identity_shortcuts.py --smoke

The paper reports the median of 5 runs; "fail" means above 20 % error.
"""
from __future__ import annotations

from resnet_jax import paper
from resnet_jax.reproduce import Comparison, main_guard, parser, run

OPTIONS = "model.shortcut_options"
VARIANTS = {
    "original": {},
    "scale_shortcut_0.5": {"model.shortcut": "scale", f"{OPTIONS}.scale": 0.5},
    "scale_both_0.5": {"model.shortcut": "scale", f"{OPTIONS}.scale": 0.5, f"{OPTIONS}.scale_residual": True},
    "exclusive_gate_b0": {"model.shortcut": "gate", f"{OPTIONS}.gate_bias_init": 0.0},
    "exclusive_gate_b-6": {"model.shortcut": "gate", f"{OPTIONS}.gate_bias_init": -6.0},
    "exclusive_gate_b-7": {"model.shortcut": "gate", f"{OPTIONS}.gate_bias_init": -7.0},
    "shortcut_gate_b0": {"model.shortcut": "shortcut_gate", f"{OPTIONS}.gate_bias_init": 0.0},
    "shortcut_gate_b-6": {"model.shortcut": "shortcut_gate", f"{OPTIONS}.gate_bias_init": -6.0},
    "conv1x1": {"model.shortcut": "conv1x1"},
    "dropout_0.5": {"model.shortcut": "dropout", f"{OPTIONS}.rate": 0.5},
}
SMOKE = ("original", "scale_both_0.5", "exclusive_gate_b-6", "conv1x1", "dropout_0.5")


def main() -> None:
  p = parser(__doc__, "runs/identity_shortcuts")
  p.add_argument("--model", default="cifar10_resnet110", help="base config")
  args = p.parse_args()
  if args.smoke and args.only is None:
    args.only = list(SMOKE)
  run("identity_shortcuts", [Comparison("shortcuts", args.model, VARIANTS, paper.IDENTITY_SHORTCUTS)], args,
      "Shortcut variants on ResNet-110, CIFAR-10 (He et al. 2016, Table 1)",
      notes=["paper: median of 5 runs on the 10k test set; shortcuts where dimensions change are option A "
             "(`model.shortcut_options.downsample`)"])


if __name__ == "__main__":
  main_guard(main)
