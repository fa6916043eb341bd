"""The papers' published numbers, for printing beside ours.

Errors are top-1 test error in percent, as printed in the papers. ``None`` marks a
result the paper reports only as a curve or as "fail" (>20 % error). Sources:
He et al. 2015 (arXiv:1512.03385), He et al. 2016 (arXiv:1603.05027), Xie et al.
2017 (arXiv:1611.05431), Huang et al. 2016 (arXiv:1603.09382), Zhang et al. 2019
(arXiv:1901.09321); table numbers in each entry's ``source``. The modern recipes
(`RECIPES`): Wightman et al. 2021 (arXiv:2110.00476), Goyal et al. 2017 (arXiv:1706.02677),
MLPerf Training v1.0's ResNet-50 reference (mlcommons/training), Zhang et al. 2018
(arXiv:1710.09412).

``IMAGENET_2018_2021``: the networks after 2017 (timm's names), single-crop ImageNet
top-1 error: the paper's own number where its paper reports one for that network (He et al.
2019, arXiv:1812.01187; Hu et al. 2018, arXiv:1709.01507; Wang et al. 2020, arXiv:1910.03151;
Bello et al. 2021, arXiv:2103.07579), and for every one the published evaluation of timm's
default checkpoint of it (`results/results-imagenet.csv` of pytorch-image-models, the weights
`rj.interop.pretrained` loads), at the checkpoint's own resolution.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from resnet_jax import errors


# How a paper reports a result over several runs (He et al. 2015 Table 6: "best (mean±std)";
# He et al. 2016: "median of 5 runs", Table 4 "median (mean±std)"; Xie et al. 2017: "average").
STATISTICS = ("single", "best", "median", "mean")


@dataclasses.dataclass(frozen=True)
class PaperResult:
  error: Optional[float]          # percent, the paper's headline figure; None: curve only, or "fail"
  source: str
  note: str = ""
  statistic: str = "single"       # what `error` is, over `runs` runs (one of STATISTICS)
  runs: int = 1
  mean: Optional[float] = None    # printed beside it, e.g. "6.43 (6.61±0.16)"
  std: Optional[float] = None

  def __post_init__(self):
    if self.statistic not in STATISTICS:
      raise errors.InputError(f"statistic={self.statistic!r} is not one of {STATISTICS}")

  def text(self) -> str:
    """The figure as the paper prints it: "6.43 (6.61±0.16), best (mean±std) of 5 runs"."""
    if self.error is None:
      return "fail (>20)" if self.note == FAIL else "curve only"
    figure = f"{self.error:.2f}"
    if self.mean is not None:
      figure += f" ({self.mean:.2f}±{self.std:.2f})"
    if self.statistic == "single":
      return figure
    spread = " (mean±std)" if self.mean is not None else ""
    return f"{figure}, {self.statistic}{spread} of {self.runs} runs"


FAIL = "fail"

# He et al. 2015, Table 6 (CIFAR-10, 45k/5k split for the schedule, test error on the 10k test set).
CIFAR10_DEPTH = {
    "cifar_resnet20": PaperResult(8.75, "He et al. 2015, Table 6"),
    "cifar_resnet32": PaperResult(7.51, "He et al. 2015, Table 6"),
    "cifar_resnet44": PaperResult(7.17, "He et al. 2015, Table 6"),
    "cifar_resnet56": PaperResult(6.97, "He et al. 2015, Table 6"),
    "cifar_resnet110": PaperResult(6.43, "He et al. 2015, Table 6", statistic="best", runs=5, mean=6.61, std=0.16),
    "cifar_resnet1202": PaperResult(7.93, "He et al. 2015, Table 6"),
    "cifar_plain20": PaperResult(None, "He et al. 2015, Fig. 6 (curves only)"),
    "cifar_plain32": PaperResult(None, "He et al. 2015, Fig. 6 (curves only)"),
    "cifar_plain44": PaperResult(None, "He et al. 2015, Fig. 6 (curves only)"),
    "cifar_plain56": PaperResult(None, "He et al. 2015, Fig. 6 (curves only)"),
}

# ResNet-110 on CIFAR-10 trained as the later papers did: stochastic depth (Huang et al. 2016, Table 1,
# "CIFAR-10+": test error at the epoch of the lowest validation error, 45k/5k split) and without
# normalisation (Zhang et al. 2019, Table 2). Keyed by config name.
CIFAR10_RESNET110_LATER = {
    "cifar10_resnet110_stochastic_depth": PaperResult(
        5.25, "Huang et al. 2016, Table 1 (110 layers, CIFAR-10+)",
        "constant depth 6.41 in the same table; the authors' README: 5.23 for one run of main.lua"),
    "cifar10_fixup_resnet110": PaperResult(
        7.24, "Zhang et al. 2019, Table 2 (ResNet-110 w/ Fixup, no normalisation)",
        "not verified against the paper's own table here (from the paper as recalled; w/ BatchNorm 6.61, "
        "He et al. 2015)"),
}

# He et al. 2016, Table 1: shortcut variants on ResNet-110, CIFAR-10 (all of the paper's CIFAR
# results are the median of 5 runs, §3.1).
IDENTITY_SHORTCUTS = {
    "original": PaperResult(6.61, "He et al. 2016, Table 1", statistic="median", runs=5),
    "scale_shortcut_0.5": PaperResult(None, "He et al. 2016, Table 1", FAIL),
    "scale_both_0.5": PaperResult(12.35, "He et al. 2016, Table 1", "frozen gating", statistic="median", runs=5),
    "exclusive_gate_b-6": PaperResult(8.70, "He et al. 2016, Table 1", statistic="median", runs=5),
    "exclusive_gate_b-7": PaperResult(9.81, "He et al. 2016, Table 1", statistic="median", runs=5),
    "exclusive_gate_b0": PaperResult(None, "He et al. 2016, Table 1", FAIL),
    "shortcut_gate_b0": PaperResult(12.86, "He et al. 2016, Table 1", statistic="median", runs=5),
    "shortcut_gate_b-6": PaperResult(6.91, "He et al. 2016, Table 1", statistic="median", runs=5),
    "conv1x1": PaperResult(12.22, "He et al. 2016, Table 1", statistic="median", runs=5),
    "dropout_0.5": PaperResult(None, "He et al. 2016, Table 1", FAIL),
}

# He et al. 2016, Table 2: activation placement, CIFAR-10.
UNIT_ORDERS = {
    ("cifar_resnet110", "original"): PaperResult(6.61, "He et al. 2016, Table 2", statistic="median", runs=5),
    ("cifar_resnet110", "bn_after_add"): PaperResult(8.17, "He et al. 2016, Table 2", statistic="median", runs=5),
    ("cifar_resnet110", "relu_before_add"): PaperResult(7.84, "He et al. 2016, Table 2", statistic="median", runs=5),
    ("cifar_resnet110", "relu_preact"): PaperResult(6.71, "He et al. 2016, Table 2", statistic="median", runs=5),
    ("cifar_resnet110", "full_preact"): PaperResult(6.37, "He et al. 2016, Table 2", statistic="median", runs=5),
    ("cifar_preact_resnet164", "original"): PaperResult(5.93, "He et al. 2016, Table 2", statistic="median", runs=5),
    ("cifar_preact_resnet164", "bn_after_add"): PaperResult(6.50, "He et al. 2016, Table 2", statistic="median", runs=5),
    ("cifar_preact_resnet164", "relu_before_add"): PaperResult(6.14, "He et al. 2016, Table 2", statistic="median", runs=5),
    ("cifar_preact_resnet164", "relu_preact"): PaperResult(5.91, "He et al. 2016, Table 2", statistic="median", runs=5),
    ("cifar_preact_resnet164", "full_preact"): PaperResult(5.46, "He et al. 2016, Table 2", statistic="median", runs=5),
}

# He et al. 2016, Table 3: original vs pre-activation units (median of 5 runs).
PREACT = {
    ("cifar10", "cifar_preact_resnet164", "original"): PaperResult(5.93, "He et al. 2016, Table 3", statistic="median", runs=5),
    ("cifar10", "cifar_preact_resnet164", "full_preact"): PaperResult(5.46, "He et al. 2016, Table 3", statistic="median", runs=5),
    ("cifar10", "cifar_preact_resnet1001", "original"): PaperResult(7.61, "He et al. 2016, Table 3", statistic="median", runs=5),
    ("cifar10", "cifar_preact_resnet1001", "full_preact"): PaperResult(4.92, "He et al. 2016, Tables 3-4", statistic="median", runs=5, mean=4.89, std=0.14),
    ("cifar100", "cifar_preact_resnet164", "original"): PaperResult(25.16, "He et al. 2016, Table 3", statistic="median", runs=5),
    ("cifar100", "cifar_preact_resnet164", "full_preact"): PaperResult(24.33, "He et al. 2016, Table 3", statistic="median", runs=5),
    ("cifar100", "cifar_preact_resnet1001", "original"): PaperResult(27.82, "He et al. 2016, Table 3", statistic="median", runs=5),
    ("cifar100", "cifar_preact_resnet1001", "full_preact"): PaperResult(22.71, "He et al. 2016, Tables 3-4", statistic="median", runs=5, mean=22.68, std=0.22),
}

# Xie et al. 2017, Table 7 (average of 10 runs).
RESNEXT_CIFAR = {
    ("cifar10", "resnext29_8x64d"): PaperResult(3.65, "Xie et al. 2017, Table 7", statistic="mean", runs=10),
    ("cifar10", "resnext29_16x64d"): PaperResult(3.58, "Xie et al. 2017, Table 7", statistic="mean", runs=10),
    ("cifar100", "resnext29_8x64d"): PaperResult(17.77, "Xie et al. 2017, Table 7", statistic="mean", runs=10),
    ("cifar100", "resnext29_16x64d"): PaperResult(17.31, "Xie et al. 2017, Table 7", statistic="mean", runs=10),
}

# He et al. 2015, Tables 2 and 3 (ImageNet val, 10-crop top-1); Xie et al. 2017, Table 3 (1-crop).
IMAGENET = {
    ("plain18", "10-crop"): PaperResult(27.94, "He et al. 2015, Table 2"),
    ("resnet18", "10-crop"): PaperResult(27.88, "He et al. 2015, Table 2 (option A)"),
    ("plain34", "10-crop"): PaperResult(28.54, "He et al. 2015, Table 2"),
    ("resnet34_A", "10-crop"): PaperResult(25.03, "He et al. 2015, Table 3"),
    ("resnet34_B", "10-crop"): PaperResult(24.52, "He et al. 2015, Table 3"),
    ("resnet34_C", "10-crop"): PaperResult(24.19, "He et al. 2015, Table 3"),
    ("resnet50", "10-crop"): PaperResult(22.85, "He et al. 2015, Table 3"),
    ("resnet101", "10-crop"): PaperResult(21.75, "He et al. 2015, Table 3"),
    ("resnet152", "10-crop"): PaperResult(21.43, "He et al. 2015, Table 3"),
    ("resnet50", "1-crop"): PaperResult(23.9, "Xie et al. 2017, Table 3"),
    ("resnext50_32x4d", "1-crop"): PaperResult(22.2, "Xie et al. 2017, Table 3"),
    ("resnet101", "1-crop"): PaperResult(22.0, "Xie et al. 2017, Table 3"),
    ("resnext101_32x4d", "1-crop"): PaperResult(21.2, "Xie et al. 2017, Table 3"),
}

# The ResNets of 2018–2021: (name, "paper") where the network's paper prints its error, (name,
# "timm") for timm's default checkpoint of it (1-crop, the resolution and crop in the source).
IMAGENET_2018_2021 = {
    ("resnet50c", "paper"): PaperResult(23.13, "He et al. 2019, Table 5 (ResNet-50-C, 76.87 top-1)"),
    ("resnet50d", "paper"): PaperResult(22.84, "He et al. 2019, Table 5 (ResNet-50-D, 77.16 top-1)",
                                        "the paper's baseline recipe; 20.71 with all its refinements, Table 6"),
    ("seresnet50", "paper"): PaperResult(23.29, "Hu et al. 2018, Table 2 (SE-ResNet-50)"),
    ("seresnet101", "paper"): PaperResult(22.38, "Hu et al. 2018, Table 2 (SE-ResNet-101)"),
    ("seresnext50_32x4d", "paper"): PaperResult(21.10, "Hu et al. 2018, Table 2 (SE-ResNeXt-50, 32×4d)"),
    ("seresnext101_32x4d", "paper"): PaperResult(20.70, "Hu et al. 2018, Table 2 (SE-ResNeXt-101, 32×4d)"),
    ("ecaresnet50d", "paper"): PaperResult(22.52, "Wang et al. 2020, Table 2 (ECA-Net50, 77.48 top-1)",
                                           "ECA on the plain ResNet-50, not ResNet-D"),
    ("ecaresnet101d", "paper"): PaperResult(21.35, "Wang et al. 2020, Table 2 (ECA-Net101, 78.65 top-1)",
                                            "ECA on the plain ResNet-101, not ResNet-D"),
    ("resnetrs50", "paper"): PaperResult(21.2, "Bello et al. 2021, ResNet-RS-50 at 160px (78.8 top-1; the "
                                         "models of its speed-accuracy Pareto curve, Fig. 1)"),
    ("resnetrs101", "paper"): PaperResult(18.8, "Bello et al. 2021, ResNet-RS-101 at 192px (81.2 top-1)"),
    ("resnetrs152", "paper"): PaperResult(17.0, "Bello et al. 2021, ResNet-RS-152 at 256px (83.0 top-1)"),
    ("resnetrs200", "paper"): PaperResult(16.6, "Bello et al. 2021, ResNet-RS-200 at 256px (83.4 top-1)"),
    ("resnet18d", "timm"): PaperResult(27.704, "timm results-imagenet.csv: resnet18d.ra2_in1k, 224px, crop 0.875"),
    ("resnet34d", "timm"): PaperResult(22.892, "timm results-imagenet.csv: resnet34d.ra2_in1k, 224px, crop 0.875"),
    ("resnet26d", "timm"): PaperResult(23.302, "timm results-imagenet.csv: resnet26d.bt_in1k, 224px, crop 0.875"),
    ("resnet50d", "timm"): PaperResult(19.454, "timm results-imagenet.csv: resnet50d.ra2_in1k, 224px, crop 0.875"),
    ("resnet101d", "timm"): PaperResult(17.746, "timm results-imagenet.csv: resnet101d.ra2_in1k, 256px, crop 0.950"),
    ("resnet152d", "timm"): PaperResult(16.840, "timm results-imagenet.csv: resnet152d.ra2_in1k, 256px, crop 0.950"),
    ("resnet200d", "timm"): PaperResult(16.750, "timm results-imagenet.csv: resnet200d.ra2_in1k, 256px, crop 0.950"),
    ("resnet50c", "timm"): PaperResult(21.984, "timm results-imagenet.csv: resnet50c.gluon_in1k, 224px, crop 0.875"),
    ("resnext50d_32x4d", "timm"): PaperResult(20.328, "timm results-imagenet.csv: resnext50d_32x4d.bt_in1k, 224px, crop 0.875"),
    ("seresnet50", "timm"): PaperResult(19.988, "timm results-imagenet.csv: seresnet50.a1_in1k, 224px, crop 0.950"),
    ("seresnext50_32x4d", "timm"): PaperResult(18.732, "timm results-imagenet.csv: seresnext50_32x4d.racm_in1k, 224px, crop 0.875"),
    ("seresnext101_32x4d", "timm"): PaperResult(19.114, "timm results-imagenet.csv: seresnext101_32x4d.gluon_in1k, 224px, crop 0.875"),
    ("ecaresnet50d", "timm"): PaperResult(19.366, "timm results-imagenet.csv: ecaresnet50d.miil_in1k, 224px, crop 0.875"),
    ("ecaresnet101d", "timm"): PaperResult(17.820, "timm results-imagenet.csv: ecaresnet101d.miil_in1k, 224px, crop 0.875"),
    ("resnetrs50", "timm"): PaperResult(22.142, "timm results-imagenet.csv: resnetrs50.tf_in1k, 160px, crop 0.910"),
    ("resnetrs101", "timm"): PaperResult(19.294, "timm results-imagenet.csv: resnetrs101.tf_in1k, 192px, crop 0.940"),
    ("resnetrs152", "timm"): PaperResult(17.100, "timm results-imagenet.csv: resnetrs152.tf_in1k, 256px, crop 1.000"),
    ("resnetrs200", "timm"): PaperResult(16.116, "timm results-imagenet.csv: resnetrs200.tf_in1k, 256px, crop 1.000"),
    ("resnetv2_50x1_bit", "timm"): PaperResult(19.614, "timm results-imagenet.csv: resnetv2_50x1_bit.goog_in21k_ft_in1k, 448px, crop 1.000"),
    ("resnetv2_101x1_bit", "timm"): PaperResult(17.668, "timm results-imagenet.csv: resnetv2_101x1_bit.goog_in21k_ft_in1k, 448px, crop 1.000"),
    ("resnetv2_50x3_bit", "timm"): PaperResult(16.018, "timm results-imagenet.csv: resnetv2_50x3_bit.goog_in21k_ft_in1k, 448px, crop 1.000"),
    ("resnetv2_50", "timm"): PaperResult(19.590, "timm results-imagenet.csv: resnetv2_50.a1h_in1k, 224px, crop 0.950"),
    ("resnetblur50", "timm"): PaperResult(20.694, "timm results-imagenet.csv: resnetblur50.bt_in1k, 224px, crop 0.875"),
    ("resnetaa50", "timm"): PaperResult(19.386, "timm results-imagenet.csv: resnetaa50.a1h_in1k, 224px, crop 0.950"),
    ("resnet50_gn", "timm"): PaperResult(19.926, "timm results-imagenet.csv: resnet50_gn.a1h_in1k, 224px, crop 0.940"),
    ("resnext101_32x16d", "timm"): PaperResult(15.834, "timm results-imagenet.csv: resnext101_32x16d.fb_wsl_ig1b_ft_in1k, 224px, crop 0.875"),
}

# The modern recipes (configs of the same names; docs/training.md, "Recipes"): top-1 error in percent on
# ImageNet val (single 224 crop) or the CIFAR-10 test set.
RECIPES = {
    "imagenet_resnet50_rsb_a1": PaperResult(19.6, "Wightman et al. 2021, Table 1 (80.4 % top-1)"),
    "imagenet_resnet50_rsb_a2": PaperResult(20.2, "Wightman et al. 2021, Table 1 (79.8 % top-1)"),
    "imagenet_resnet50_rsb_a3": PaperResult(21.9, "Wightman et al. 2021, Table 1 (78.1 % top-1)"),
    "imagenet_resnet50_goyal": PaperResult(23.74, "Goyal et al. 2017, Table 1 (k·n = 8k, gradual warm-up)",
                                           "± 0.09 (std of 5 runs)", statistic="mean", runs=5),
    "imagenet_resnet50_mlperf_lars": PaperResult(24.1, "MLPerf Training v1.0 ResNet-50 quality target "
                                                 "(75.9 % top-1)", "a target every submission reaches, "
                                                 "not a measured mean"),
    "cifar10_preact_resnet18_mixup": PaperResult(4.2, "Zhang et al. 2018, Figure 3a (CIFAR-10, "
                                                 "PreAct ResNet-18, mixup α = 1)"),
}
