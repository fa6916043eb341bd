"""The dataset protocol: what the generic `Pipeline` needs from one dataset.

A dataset is a `DatasetSource` registered under its name (`register_dataset`). The
source is data-free: `info` (classes, image shape, split sizes), its config fields,
and the hooks `open` and `prepare`. `open(config, data_dir)` returns an `OpenDataset`,
the configured splits as the pipeline reads them: example counts, per-example host
loading (decoding, host-side augmentation) and the jittable on-device `preprocess`.
Everything about the sample stream (epoch permutations, sharding over processes,
padded evaluation, resumable state) stays in the pipeline, the same for every dataset.
"""
from __future__ import annotations

import abc
import dataclasses
import os
import pathlib
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from resnet_jax import errors

ExampleSeed = Tuple[int, int, int]  # (seed, global step, batch row): `np.random.default_rng(seed)`


def available_cores() -> int:
  """CPU cores this process may run on (its affinity mask, e.g. a container's or SLURM's share)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # macOS, Windows
    return os.cpu_count() or 1


def decode_threads(config: ml_collections.ConfigDict) -> int:
  """Decoding threads per process: `num_threads`, or when 0 the cores shared out among the
  `num_workers` processes (at least one each)."""
  if int(config.num_threads) > 0:
    return int(config.num_threads)
  return max(available_cores() // max(int(config.num_workers), 1), 1)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Facts about a dataset that need no files (benchmarks, model building, schedules).

  Attributes:
    name: the registered name, e.g. "cifar10".
    num_classes: labels are integers in [0, num_classes).
    image_shape: (H, W, C) of the default network input.
    splits: number of examples of each standard split, e.g. {"train": 50000, "test": 10000}.
    train_split / eval_split: the default splits of `default_config(name)`.
  """
  name: str
  num_classes: int
  image_shape: Tuple[int, int, int]
  splits: Mapping[str, int]
  train_split: str
  eval_split: str

  def __post_init__(self):
    if len(self.image_shape) != 3 or self.num_classes < 1:
      raise errors.InputError(f"DatasetInfo({self.name!r}): image_shape {self.image_shape} is not (H, W, C) or "
                       f"num_classes={self.num_classes} < 1")
    object.__setattr__(self, "image_shape", tuple(int(d) for d in self.image_shape))

  @property
  def num_train_examples(self) -> int:
    return self.num_examples(self.train_split)

  @property
  def num_eval_examples(self) -> int:
    return self.num_examples(self.eval_split)

  def num_examples(self, split: str) -> int:
    """Examples of a TFDS split string, slices included: `num_examples("train[:45000]")` is 45000."""
    sizes = {k: _SplitSize(v) for k, v in self.splits.items()}
    try:
      parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(sizes)
    except (AssertionError, KeyError, ValueError) as e:
      raise errors.InputError(f"bad split {split!r} for {self.name} ({errors.one_line(e)}); valid: "
                       f"{', '.join(self.splits)} with TFDS slicing, e.g. 'train[:45000]'") from e
    return sum(len(range(self.splits[p.splitname])[p.from_:p.to]) for p in parts)


@dataclasses.dataclass(frozen=True)
class _SplitSize:
  num_examples: int  # what tfds.core.ReadInstruction.to_absolute reads of a SplitInfo


class OpenDataset(abc.ABC):
  """The configured train and eval splits of one dataset, as the generic pipeline reads them.

  Records are addressed by index, 0 ≤ record < num_*_examples, in a fixed order (the
  pipeline permutes train records itself). Images are uint8 [H, W, C]; labels int.

  Attributes:
    num_train_examples / num_eval_examples: records of the configured splits.
    image_shape: (H, W, C) of train images, the network input.
    eval_image_shape: (H, W, C) of eval images (larger than `image_shape` for 10-crop).
    read_threads: Grain threads calling `load_*` (1 for arrays in memory, more to decode).
  """
  num_train_examples: int
  num_eval_examples: int
  image_shape: Tuple[int, int, int]
  read_threads: int = 1

  @property
  def eval_image_shape(self) -> Tuple[int, int, int]:
    return self.image_shape

  def train_arrays(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The whole train split as (uint8 images [N, H, W, C], labels [N]) in record order, when it
    is held in memory and `load_train` only indexes it (no host augmentation); else None.

    Datasets that return arrays can keep the split on the devices (`data.placement`).
    """
    return None

  @abc.abstractmethod
  def load_train(self, record: int, example_seed: ExampleSeed) -> Tuple[np.ndarray, int]:
    """(image, label) of a train record; host randomness from `np.random.default_rng(example_seed)`.

    The seed depends on (seed, step, row) only, so host augmentation is the same on any
    number of hosts and after a resume.
    """

  @abc.abstractmethod
  def load_eval(self, record: int) -> Tuple[np.ndarray, int]:
    """(image, label) of an eval record, deterministic."""

  @abc.abstractmethod
  def preprocess(self, images: jax.Array, rng: Optional[jax.Array], train: bool) -> jax.Array:
    """uint8 [B, H, W, C] -> float32 network input; pure and jittable, run inside the train step.

    `rng` is one key per global batch (None at evaluation).
    """

  def eval_preprocessing(self) -> Optional[Any]:
    """The eval-time transform of images as they come (`preprocessing.Preprocessing`), which
    a training run records with its weights; None when the dataset does not describe it."""
    return None


class DatasetSource(abc.ABC):
  """One dataset (or one family of datasets, one instance per name) behind the generic pipeline.

  Subclasses set `info` and implement `open`; `config_fields` adds dataset-specific
  config fields and `prepare` converts official files once (`resnet-jax prepare`).
  """
  info: DatasetInfo

  @property
  def name(self) -> str:
    return self.info.name

  def config_fields(self) -> Dict[str, Any]:
    """Defaults of this dataset's config fields, on top of those of `default_config`."""
    return {"train_split": self.info.train_split, "eval_split": self.info.eval_split}

  @abc.abstractmethod
  def open(self, config: ml_collections.ConfigDict, data_dir: pathlib.Path) -> OpenDataset:
    """The splits `config.train_split` / `config.eval_split`; errors name the fix in one line."""

  def prepare(self, source: Optional[str | os.PathLike], data_dir: pathlib.Path,
              allow_partial: bool = False) -> pathlib.Path:
    """Converts the official files in `source` into `data_dir` once; returns the dataset directory.

    `allow_partial`: accept files holding fewer records than the official ones.
    """
    del source, data_dir, allow_partial
    raise errors.InputError(f"{self.name} has no prepare step: it reads its data as it is")
