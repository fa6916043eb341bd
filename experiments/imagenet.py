"""ImageNet: He et al. 2015 Tables 2-4 and Xie et al. 2017 Table 3, plus what each run costs.

  python experiments/imagenet.py --plan                         # configs, params, MACs, cost estimate
  python experiments/imagenet.py --table 2 --workdir runs/in    # plain-18/34 vs ResNet-18/34 (option A)
  python experiments/imagenet.py --table 3 --workdir runs/in    # ResNet-34 A/B/C, ResNet-50/101/152
  python experiments/imagenet.py --table resnext --workdir runs/in
  python experiments/imagenet.py --smoke                        # tiny nets on a generated ImageNet tree

ImageNet must be prepared first (`resnet-jax prepare imagenet2012 --source DIR_WITH_THE_TARS`),
or give `--imagenet-source`. Tables 2-3 are compared under 10-crop testing, as the paper
reports them (`data.ten_crop`; each run also logs its single-crop error), Xie et al. Table 3
under single-crop testing. Table 4's multi-scale fully-convolutional testing is not
implemented.
"""
from __future__ import annotations

import pathlib

import resnet_jax.data as rjd
from resnet_jax import configs
from resnet_jax import models
from resnet_jax import paper
from resnet_jax import train
from resnet_jax.reproduce import Comparison, main_guard, parser, run

TRAIN_IMAGES = rjd.dataset_info("imagenet2012").num_train_examples
# Reference: the Flax ImageNet example's ResNet-50 train step, bf16, batch 256, on one H100
# (5,666 img/s, synthetic data; measured for this project, see experiments/README.md).
REFERENCE_MODEL, REFERENCE_IMG_S = "resnet50", 5666.0

# He et al. 2015 Tables 2-3 report 10-crop error: those groups evaluate 10 crops too.
TEN_CROP = {"overrides": {"data.ten_crop": True}, "metric": "ten_crop_error",
            "metric_label": "10-crop (corners and centre of the 256² centre square, and flips)"}
SINGLE_CROP = {"metric_label": "single 224 centre crop of the 256 resize"}

TABLES = {
    "2": Comparison("table2", "imagenet_resnet18", {
        "plain18": {"config": "imagenet_plain18"},
        "resnet18_A": {"config": "imagenet_resnet18", "model.shortcut": "A"},
        "plain34": {"config": "imagenet_plain34"},
        "resnet34_A": {"config": "imagenet_resnet34", "model.shortcut": "A"},
    }, {"plain18": paper.IMAGENET[("plain18", "10-crop")],
        "resnet18_A": paper.IMAGENET[("resnet18", "10-crop")],
        "plain34": paper.IMAGENET[("plain34", "10-crop")],
        "resnet34_A": paper.IMAGENET[("resnet34_A", "10-crop")]}, **TEN_CROP),
    "3": Comparison("table3", "imagenet_resnet34", {
        "resnet34_A": {"model.shortcut": "A"},
        "resnet34_B": {"model.shortcut": "B"},
        "resnet34_C": {"model.shortcut": "C"},
        "resnet50": {"config": "imagenet_resnet50"},
        "resnet101": {"config": "imagenet_resnet101"},
        "resnet152": {"config": "imagenet_resnet152"},
    }, {"resnet34_A": paper.IMAGENET[("resnet34_A", "10-crop")],
        "resnet34_B": paper.IMAGENET[("resnet34_B", "10-crop")],
        "resnet34_C": paper.IMAGENET[("resnet34_C", "10-crop")],
        "resnet50": paper.IMAGENET[("resnet50", "10-crop")],
        "resnet101": paper.IMAGENET[("resnet101", "10-crop")],
        "resnet152": paper.IMAGENET[("resnet152", "10-crop")]}, **TEN_CROP),
    # Xie et al. 2017 Table 3: the ResNet baselines trained with the ResNeXt recipe
    # (fb.resnet.torch's pipeline, 100 epochs) and the stride on the 3×3, single crop.
    "resnext": Comparison("resnext", "imagenet_resnext50_32x4d", {
        "resnet50": {"model.name": "resnet50", "model.stride_on": "conv3x3"},
        "resnext50_32x4d": {},
        "resnet101": {"config": "imagenet_resnext101_32x4d", "model.name": "resnet101",
                      "model.stride_on": "conv3x3"},
        "resnext101_32x4d": {"config": "imagenet_resnext101_32x4d"},
    }, {"resnet50": paper.IMAGENET[("resnet50", "1-crop")],
        "resnext50_32x4d": paper.IMAGENET[("resnext50_32x4d", "1-crop")],
        "resnet101": paper.IMAGENET[("resnet101", "1-crop")],
        "resnext101_32x4d": paper.IMAGENET[("resnext101_32x4d", "1-crop")]}, **SINGLE_CROP),
}
# Two real ILSVRC 2012 classes for the generated smoke tree (the builder checks wnids).
SMOKE_WNIDS = ("n01440764", "n01443537")


def plan(groups) -> str:
  """Markdown: every run's network, parameters, MACs and the estimated one-GPU time."""
  ref_macs = models.flops(models.create(REFERENCE_MODEL), (1, 224, 224, 3))
  lines = ["| table | variant | network | params | GMACs/img | epochs | est. H100-hours | paper (top-1 err.) |",
           "|---|---|---|---:|---:|---:|---:|---|"]
  for group in groups:
    for variant, overrides in group.variants.items():
      overrides = dict(overrides)
      config = configs.load(overrides.pop("config", group.base), overrides)
      model = train.build.model(config, 1000)
      shape = (1, config.data.image_size, config.data.image_size, 3)
      params = models.count_params(models.abstract_variables(model, shape))
      macs = models.flops(model, shape)
      hours = config.num_epochs * TRAIN_IMAGES / (REFERENCE_IMG_S * ref_macs / macs) / 3600
      p = group.paper.get(variant)
      lines.append(f"| {group.name} | {variant} | {config.model.name} | {params:,} | {macs / 1e9:.2f} | "
                   f"{config.num_epochs:g} | {hours:.1f} | {p.error:.2f} ({p.source}) |")
  lines += ["", f"Hours: the config's epochs × {TRAIN_IMAGES:,} images at the Flax example's ResNet-50 "
            f"train-step speed on one H100 ({REFERENCE_IMG_S:,.0f} img/s, bf16, batch 256), scaled by "
            "MACs. An estimate, not a measurement of this code: run `resnet-jax bench --config "
            "imagenet_resnet50 --dtype bfloat16` on the target machine and scale by its img/s. On n "
            "chips of a TPU slice (or n GPUs) divide by n × (per-chip img/s / "
            f"{REFERENCE_IMG_S:,.0f}); the input pipeline needs about one CPU core per 600 img/s "
            "(`experiments/bench_data.py`)."]
  return "\n".join(lines)


def prepare_smoke_imagenet(workdir: pathlib.Path) -> str:
  """A two-class ILSVRC-style folder tree of small JPEGs, prepared as imagenet2012."""
  from resnet_jax.data import testing as data_testing
  data_dir = workdir / "tfds"
  source = workdir / "imagenet_src"
  if not source.is_dir():
    data_testing.write_imagenet_folder(source, SMOKE_WNIDS, per_class=32, size=(72, 96))
  rjd.prepare("imagenet2012", source, data_dir)  # a no-op once prepared
  return str(data_dir)


def main() -> None:
  p = parser(__doc__, "runs/imagenet")
  p.add_argument("--table", nargs="+", choices=sorted(TABLES), default=None,
                 help="which tables to run (default: all with --plan or --smoke, else required)")
  p.add_argument("--plan", action="store_true", help="print configs, params, MACs and cost; train nothing")
  p.add_argument("--imagenet-source", default=None,
                 help="official ILSVRC 2012 tars or an extracted train/val tree, prepared first if needed")
  args = p.parse_args()
  groups = [TABLES[t] for t in (args.table or (sorted(TABLES) if (args.plan or args.smoke) else []))]
  if not groups:
    raise SystemExit("error: give --table 2, 3 or resnext (or --plan / --smoke)")
  if args.plan:
    print(plan(groups))
    return
  workdir = pathlib.Path(args.workdir)
  if args.smoke:
    data_dir = prepare_smoke_imagenet(workdir)
    splits = ("train[:64]", "validation[:32]", "top-1 error, 32 generated validation images (smoke)")
    if args.only is None:  # one network of each kind is enough to keep the scripts from rotting
      args.only = ["plain18", "resnet34_C", "resnext50_32x4d"]
  else:
    data_dir = args.data_dir
    if args.imagenet_source:
      rjd.prepare("imagenet2012", args.imagenet_source, data_dir)
    splits = ("train", "validation", "top-1 error, 50k validation images")
  run("imagenet", groups, args, "ImageNet (He et al. 2015, Tables 2-3; Xie et al. 2017, Table 3)",
      notes=["He et al. Tables 2-3: 10-crop error, ours evaluated the same way; Xie et al. Table 3: "
             "single-crop error"],
      splits=splits, data_dir=data_dir)


if __name__ == "__main__":
  main_guard(main)
