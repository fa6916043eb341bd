"""Dataset configs: one `default_config(name)` per dataset, overridable field by field."""
from __future__ import annotations

import ml_collections

# Names accepted everywhere (`prepare`, `default_config`, `create_pipeline`).
DATASETS = ("cifar10", "cifar100", "imagenet2012")


def default_config(name: str) -> ml_collections.ConfigDict:
  """Input pipeline defaults: He et al. 2015 §4.2 (CIFAR) and §3.4 (ImageNet).

  Fields:
    name: "cifar10" | "cifar100" | "imagenet2012".
    data_dir: TFDS data dir; None -> $TFDS_DATA_DIR -> ~/tensorflow_datasets.
    train_split / eval_split: TFDS split strings; the paper's 45k/5k CIFAR split is
      "train[:45000]" / "train[45000:]".
    normalization: "per_pixel_mean" (the papers: the mean image of the train split is
      subtracted) or "per_channel" (mean/std per RGB channel).
    augment: train augmentation on/off (off: normalisation only).
    image_size: side of the (square) network input.
    num_workers: host processes decoding examples (0: threads of this process).
    num_threads: decoding threads per process (ImageNet).
    prefetch_batches: batches prepared ahead of the accelerator.
  ImageNet only:
    train_augment: "scale" (He et al. 2015 §3.4: shorter side in `scale_range`, random
      crop) or "inception" (Szegedy et al. 2015 random-resized crop, `area_range`,
      `aspect_ratio_range`).
    pca_lighting: AlexNet PCA colour augmentation (Krizhevsky et al. 2012), std 0.1.
    eval_resize: shorter side before the center crop at evaluation.
    ten_crop: the eval iterator yields `eval_resize`² center squares for the 10-crop
      evaluator (`ten_crop` in `resnet_jax.data.augment`) instead of `image_size` crops.
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
  c = ml_collections.ConfigDict()
  c.name = name
  c.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.num_workers = 0
  c.num_threads = 8
  c.prefetch_batches = 2
  c.augment = True
  if name in ("cifar10", "cifar100"):
    c.train_split = "train"
    c.eval_split = "test"
    c.normalization = "per_pixel_mean"
    c.image_size = 32
    c.padding = 4
  else:
    c.train_split = "train"
    c.eval_split = "validation"
    c.normalization = "per_channel"
    c.image_size = 224
    c.train_augment = "scale"
    c.scale_range = (256, 480)
    c.area_range = (0.08, 1.0)
    c.aspect_ratio_range = (3 / 4, 4 / 3)
    c.pca_lighting = False
    c.eval_resize = 256
    c.ten_crop = False
  return c
