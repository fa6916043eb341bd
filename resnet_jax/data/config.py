"""Dataset configs: `default_config(name)`, overridable field by field."""
from __future__ import annotations

import ml_collections

from resnet_jax.data import registry


def default_config(name: str) -> ml_collections.ConfigDict:
  """Input pipeline defaults of a registered dataset: He et al. 2015 §4.2 (CIFAR), §3.4 (ImageNet).

  Fields of every dataset:
    name: a registered dataset (`resnet_jax.data.DATASETS`).
    data_dir: TFDS data dir; None -> $TFDS_DATA_DIR -> ~/tensorflow_datasets.
    train_split / eval_split: TFDS split strings; the paper's 45k/5k CIFAR split is
      "train[:45000]" / "train[45000:]".
    augment: train augmentation on/off (off: normalisation only).
    num_workers: host processes decoding examples (0: threads of this process).
    num_threads: decoding threads per process (datasets decoded on the host: ImageNet); 0: the
      machine's cores shared out among the processes (`source.decode_threads`).
    prefetch_batches: batches prepared ahead of the accelerator.
    placement: where train batches are assembled: "auto" (on the devices when the dataset is
      held in memory and fits, e.g. CIFAR; else the host), "device" or "host"
      (`device_resident.py`). The batches are the same either way.
    repeated_augmentation: each epoch's order repeats every example this many times in a row
      (Hoffer et al. 2020; timm's RepeatAugSampler): an epoch still has as many examples, of
      which 1/repeated_augmentation are distinct. 1: off.
  Fields of one dataset: its source's `config_fields()` (CIFAR: `small_images.SmallImageSource`,
  normalization, image_size, padding; ImageNet: `imagenet.ImageNetSource`).
  """
  source = registry.dataset_source(name)
  c = ml_collections.ConfigDict()
  c.name = name
  c.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.num_workers = 0
  c.num_threads = 0
  c.prefetch_batches = 2
  c.augment = True
  c.placement = "auto"
  c.repeated_augmentation = 1
  for key, value in source.config_fields().items():
    setattr(c, key, value)
  return c
