"""`prepare`: official files -> the dataset directory a source reads (TFDS ArrayRecord), once."""
from __future__ import annotations

import os
import pathlib
from typing import Dict, Optional

import tensorflow_datasets as tfds

from resnet_jax import errors
from resnet_jax.data import registry
from resnet_jax.data.tfds_source import TfdsSource
from resnet_jax.storage import object_store


def resolve_data_dir(data_dir: Optional[str | os.PathLike]) -> pathlib.Path:
  """TFDS's convention: the argument, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (an
  object-store URL, e.g. gs://bucket/tensorflow_datasets, as an `etils.epath.Path`)."""
  path = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  if object_store.is_url(path):
    return object_store.as_path(path)
  return pathlib.Path(path).expanduser().absolute()


def prepare(name: str, source: Optional[str | os.PathLike] = None,
            data_dir: Optional[str | os.PathLike] = None, allow_partial: bool = False) -> pathlib.Path:
  """Prepares a registered dataset (e.g. "cifar10", "cifar100", "imagenet2012"); idempotent.

  `source`: the official files a user has (CIFAR: the binary or python folder, its
  parent, or the .tar.gz; ImageNet: a folder with ILSVRC2012_img_{train,val}.tar or a
  `train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG` tree). None downloads the official CIFAR
  archive (ImageNet has no public download). Returns the dataset directory
  `data_dir/name/version`; a prepared dataset is returned as it is.

  CIFAR files must hold their official number of records (a file cut short at a record
  boundary otherwise reads as valid, with fewer images); `allow_partial` prepares what
  they hold (a subset, e.g. for tests).
  """
  return registry.dataset_source(name).prepare(source, resolve_data_dir(data_dir), allow_partial)


def split_sizes(dataset_path: pathlib.Path) -> Dict[str, int]:
  """Split name -> examples of a prepared dataset (`data_dir/name/version`)."""
  info = tfds.builder_from_directory(str(dataset_path)).info
  return {name: int(split.num_examples) for name, split in info.splits.items()}


def _tfds_source(name: str) -> TfdsSource:
  source = registry.dataset_source(name)
  if not isinstance(source, TfdsSource):
    raise errors.InputError(f"{name} is not stored as a TFDS dataset")
  return source


def dataset_dir(name: str, data_dir: pathlib.Path) -> pathlib.Path:
  """Where TFDS keeps `name` at the version resnet_jax reads: `data_dir/name/version`."""
  return _tfds_source(name).dataset_dir(data_dir)


def check_prepared(name: str, data_dir: pathlib.Path) -> Optional[pathlib.Path]:
  """The prepared dataset's directory, None when absent; raises when it is unusable."""
  return _tfds_source(name).check_prepared(data_dir)


def prepare_command(name: str, data_dir: pathlib.Path) -> str:
  return _tfds_source(name).prepare_command(data_dir)
