"""Small-image datasets held in memory (CIFAR-10/100): every split read once into uint8 arrays.

He et al. 2015 §4.2: inputs "with the per-pixel mean subtracted", "4 pixels are padded
on each side, and a 32×32 crop is randomly sampled from the padded image or its
horizontal flip". The host only indexes arrays; normalisation, crop and flip run on
the accelerator (`augment.cifar_preprocess`).
"""
from __future__ import annotations

import functools
import pathlib
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np

from resnet_jax import errors
from resnet_jax.data import augment
from resnet_jax.data import preprocessing
from resnet_jax.data.source import DatasetInfo, ExampleSeed, OpenDataset
from resnet_jax.data.tfds_source import TfdsSource

NORMALIZATIONS = ("per_pixel_mean", "per_channel")
READ_CHUNK = 2048
Preprocess = Callable[[jax.Array, Optional[jax.Array], bool], jax.Array]


class InMemoryImages(OpenDataset):
  """Train and eval splits as uint8 arrays [N, H, W, C] and int32 labels [N]."""

  def __init__(self, train_images: np.ndarray, train_labels: np.ndarray, eval_images: np.ndarray,
               eval_labels: np.ndarray, preprocess: Preprocess,
               eval_preprocessing: Optional[preprocessing.Preprocessing] = None):
    for what, images, labels in (("train", train_images, train_labels), ("eval", eval_images, eval_labels)):
      if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise errors.InputError(f"{what} images {images.dtype} {images.shape} for {len(labels)} labels; "
                         "expected uint8 [N, H, W, C] and N labels")
    self.train_images, self.train_labels = train_images, train_labels
    self.eval_images, self.eval_labels = eval_images, eval_labels
    self.num_train_examples, self.num_eval_examples = len(train_images), len(eval_images)
    self.image_shape = tuple(train_images.shape[1:])
    self._preprocess = preprocess
    self._eval_preprocessing = eval_preprocessing

  def eval_preprocessing(self) -> Optional[preprocessing.Preprocessing]:
    return self._eval_preprocessing

  @property
  def eval_image_shape(self) -> Tuple[int, int, int]:
    return tuple(self.eval_images.shape[1:])

  def train_arrays(self) -> Tuple[np.ndarray, np.ndarray]:
    return self.train_images, self.train_labels

  def load_train(self, record: int, example_seed: ExampleSeed) -> Tuple[np.ndarray, Any]:
    del example_seed  # augmentation runs on device
    return self.train_images[record], self.train_labels[record]

  def load_eval(self, record: int) -> Tuple[np.ndarray, Any]:
    return self.eval_images[record], self.eval_labels[record]

  def preprocess(self, images: jax.Array, rng: Optional[jax.Array], train: bool) -> jax.Array:
    return self._preprocess(images, rng, train)


def read_all(source, name: str, split: str, image_shape: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
  """Every (image, label) of a small split, in record order (CIFAR: 150 MB for 50k)."""
  n = len(source)
  images = np.empty((n, *image_shape), np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, READ_CHUNK):
    stop = min(start + READ_CHUNK, n)
    try:
      try:
        records = source.__getitems__(range(start, stop))
      except TypeError:  # tfds.testing.mock_data (4.9.10) leaves its __getitems__ unbound
        records = [source[i] for i in range(start, stop)]
    except Exception as e:  # pylint: disable=broad-except
      raise errors.InputError(f"corrupt {name} {split!r} record in [{start}, {stop}) ({e}); delete the "
                       "dataset directory and prepare it again") from e
    for i, record in enumerate(records):
      image = np.asarray(record["image"])
      if image.shape != tuple(image_shape):
        raise errors.InputError(f"{name} {split!r} record {start + i} has image shape {image.shape}, "
                         f"expected {tuple(image_shape)}")
      images[start + i] = image
      labels[start + i] = record["label"]
  return images, labels


def statistics(images: np.ndarray, normalization: str) -> Tuple[np.ndarray, np.ndarray]:
  """(mean, std) of uint8 images on [0, 1] pixels: the mean image (std 1), or per channel."""
  channels = images.shape[-1]
  if normalization == "per_pixel_mean":
    mean = images.mean(axis=0, dtype=np.float64) / 255.0
    return mean.astype(np.float32), np.ones((channels,), np.float32)
  pixels = images.reshape(-1, channels)
  mean = pixels.mean(axis=0, dtype=np.float64)
  std = np.sqrt(np.maximum((pixels.astype(np.float64) ** 2).mean(axis=0) - mean ** 2, 0.0))
  return (mean / 255.0).astype(np.float32), (std / 255.0).astype(np.float32)


class SmallImageSource(TfdsSource):
  """A TFDS image dataset small enough for memory; subclasses give `info`, `version`, `builder`.

  Normalisation statistics are those of the configured train split.
  """

  def __init__(self, info: DatasetInfo):
    self.info = info

  def config_fields(self) -> Dict[str, Any]:
    """normalization: "per_pixel_mean" (the papers: the train split's mean image is subtracted)
    or "per_channel" (mean/std per channel); image_size: fixed by the dataset; padding:
    zero padding (of the normalised image, i.e. the mean) before the random crop.
    """
    return {**super().config_fields(), "normalization": "per_pixel_mean",
            "image_size": self.info.image_shape[0], "padding": 4}

  def open(self, config: ml_collections.ConfigDict, data_dir: pathlib.Path) -> InMemoryImages:
    name, shape = self.name, self.info.image_shape
    if config.normalization not in NORMALIZATIONS:
      raise errors.InputError(f"data.normalization={config.normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    if int(config.image_size) != shape[0]:
      raise errors.InputError(f"image_size={config.image_size} for {name}: its images are "
                       f"{shape[0]}×{shape[1]}")
    train = self.open_split(config.train_split, data_dir)
    evaluation = self.open_split(config.eval_split, data_dir)
    train_images, train_labels = read_all(train, name, config.train_split, shape)
    eval_images, eval_labels = read_all(evaluation, name, config.eval_split, shape)
    mean, std = statistics(train_images, config.normalization)
    preprocess = functools.partial(augment.cifar_preprocess, mean=mean, std=std,
                                   augment=bool(config.augment), padding=int(config.padding))
    recorded = preprocessing.Preprocessing(
        mean, std, shape[:2], description=f"{name} {config.train_split}: {config.normalization} "
        f"({len(train_images)} images)")
    return InMemoryImages(train_images, train_labels, eval_images, eval_labels, preprocess, recorded)
