"""Grain pipelines over TFDS ArrayRecord: deterministic, resumable, multi-host global batches.

The sample stream is defined globally: epoch e is a permutation of the train split drawn
from (seed, e); global step s takes positions [s·B, (s+1)·B) of its epoch (the remainder
of an epoch is dropped, so `steps_per_epoch = floor(num_train / B)`). Each process reads
only the rows of each global batch that its devices hold, so the same seed gives the
same global batches on one host or many, and the iterator's state (the global step) is
valid for any host count.
"""
from __future__ import annotations

import functools
import logging
import math
import pathlib
import sys
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import grain
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax.data import augment
from resnet_jax.data import prepare as prepare_lib
from resnet_jax.data.config import DATASETS

DATA_AXIS = "data"  # the training engine's mesh axis (resnet_jax.train.mesh.DATA_AXIS)
STATE_VERSION = 1
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000}
NORMALIZATIONS = ("per_pixel_mean", "per_channel")
Batch = Dict[str, jax.Array]


def open_split(name: str, split: str, data_dir: pathlib.Path, decode_images: bool = True):
  """`tfds.builder(name).as_data_source(split)`, with errors that say how to prepare."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  prepare_lib.check_prepared(name, data_dir)  # a present but unusable dataset raises here
  builder = tfds.builder(name, data_dir=str(data_dir))
  decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
  try:
    return builder.as_data_source(split=split, decoders=decoders)
  except (AssertionError, FileNotFoundError, NotImplementedError) as e:
    raise FileNotFoundError(f"{name} is not prepared in {data_dir} ({type(e).__name__}); run "
                            f"`{prepare_lib.prepare_command(name, data_dir)}`") from e
  except (KeyError, ValueError) as e:
    raise ValueError(f"bad split {split!r} for {name} ({e}); valid: "
                     f"{', '.join(builder.info.splits.keys())} with TFDS slicing, "
                     "e.g. 'train[:45000]'") from e


def _read_all(source, name: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
  """Every (image, label) of a small split, in record order (CIFAR: 150 MB for 50k)."""
  n = len(source)
  images = np.empty((n, 32, 32, 3), np.uint8)
  labels = np.empty((n,), np.int32)
  chunk = 2048
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    try:
      try:
        records = source.__getitems__(range(start, stop))
      except TypeError:  # tfds.testing.mock_data (4.9.10) leaves its __getitems__ unbound
        records = [source[i] for i in range(start, stop)]
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"corrupt {name} {split!r} record in [{start}, {stop}) ({e}); delete the "
                       "dataset directory and prepare it again") from e
    for i, record in enumerate(records):
      image = np.asarray(record["image"])
      if image.shape != (32, 32, 3):
        raise ValueError(f"{name} {split!r} record {start + i} has image shape {image.shape}, "
                         "expected (32, 32, 3)")
      images[start + i] = image
      labels[start + i] = record["label"]
  return images, labels


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


class _TrainPositions(grain.MapDataset):
  """Local example i -> (record index, example seed) of row `rows[0] + i % b` of global step i // b."""

  def __init__(self, num_records: int, global_batch: int, rows: Tuple[int, int], seed: int,
               start_step: int):
    super().__init__()
    self._n, self._b, self._rows, self._seed, self._start = (
        num_records, global_batch, rows, seed, start_step)
    self._steps_per_epoch = num_records // global_batch

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"TrainPositions(n={self._n}, batch={self._b}, rows={self._rows}, start={self._start})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    local = self._rows[1] - self._rows[0]
    step = self._start + index // local
    row = self._rows[0] + index % local
    epoch, within = divmod(step, self._steps_per_epoch)
    record = int(_permutation(self._seed, epoch, self._n)[within * self._b + row])
    return record, (self._seed, step, row)


class _EvalPositions(grain.MapDataset):
  """Local example i -> record index (-1: padding) of the eval pass, in split order."""

  def __init__(self, num_records: int, global_batch: int, rows: Tuple[int, int]):
    super().__init__()
    self._n, self._b, self._rows = num_records, global_batch, rows
    self._num_batches = math.ceil(num_records / global_batch)

  def __len__(self) -> int:
    return self._num_batches * (self._rows[1] - self._rows[0])

  def __str__(self) -> str:
    return f"EvalPositions(n={self._n}, batch={self._b}, rows={self._rows})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    local = self._rows[1] - self._rows[0]
    position = (index // local) * self._b + self._rows[0] + index % local
    return position if position < self._n else -1


def _local_rows(sharding: NamedSharding, global_batch: int) -> Tuple[int, int]:
  """The contiguous block of batch rows held by this process's devices."""
  starts, stops = set(), set()
  for index in sharding.addressable_devices_indices_map((global_batch,)).values():
    rows = index[0]
    starts.add(rows.start or 0)
    stops.add(global_batch if rows.stop is None else rows.stop)
  lo, hi = min(starts), max(stops)
  if hi - lo != len(starts) * (global_batch // sharding.mesh.shape[DATA_AXIS]):
    raise ValueError("this process's devices are not contiguous on the mesh axis 'data'; build the "
                     "mesh from jax.devices() (process-major order)")
  return lo, hi


class TrainIterator:
  """Infinite iterator of global train batches; `get_state`/`set_state` resume exactly."""

  def __init__(self, pipeline: "Pipeline", step: int = 0):
    self._pipe = pipeline
    self._step = step
    self._it: Optional[Iterator[Any]] = None

  def __iter__(self) -> "TrainIterator":
    return self

  def __next__(self) -> Batch:
    if self._it is None:
      self._it = iter(self._pipe._train_dataset(self._step))  # pylint: disable=protected-access
    local = next(self._it)
    self._step += 1
    return self._pipe._globalize(local)  # pylint: disable=protected-access

  def _fingerprint(self) -> Dict[str, Any]:
    p = self._pipe
    return {"dataset": p.config.name, "split": p.config.train_split, "seed": p.seed,
            "global_batch_size": p.global_batch_size, "num_examples": p.num_train_examples,
            "version": STATE_VERSION}

  def get_state(self) -> Dict[str, Any]:
    """JSON-serialisable: the next global step and what defines the sample stream."""
    return {"step": self._step, **self._fingerprint()}

  def set_state(self, state: Dict[str, Any]) -> None:
    expected = self._fingerprint()
    diff = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if diff:
      raise ValueError(f"data iterator state does not match this pipeline (saved, now): {diff}; "
                       "resume with the same dataset, split, seed and global batch size")
    self._step = int(state["step"])
    self._it = None


class Pipeline:
  """Train and eval batches of one dataset for a mesh; see `create_pipeline`."""

  def __init__(self, config: ml_collections.ConfigDict, global_batch_size: int, eval_batch_size: int,
               mesh: Mesh, seed: int):
    name = config.name
    if name not in DATASETS:
      raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if DATA_AXIS not in mesh.axis_names:
      raise ValueError(f"mesh axes {mesh.axis_names} have no {DATA_AXIS!r} axis; build a 1-D mesh "
                       f"named {DATA_AXIS!r} over all devices")
    num_shards = mesh.shape[DATA_AXIS]
    for what, size in (("global_batch_size", global_batch_size), ("eval_batch_size", eval_batch_size)):
      if size <= 0 or size % num_shards:
        raise ValueError(f"{what}={size} is not a positive multiple of the {num_shards} devices on "
                         f"the mesh axis {DATA_AXIS!r}")
    if config.normalization not in NORMALIZATIONS:
      raise ValueError(f"normalization={config.normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    self.config = config
    self.seed = int(seed)
    self.global_batch_size = int(global_batch_size)
    self.eval_batch_size = int(eval_batch_size)
    self.mesh = mesh
    self.sharding = NamedSharding(mesh, P(DATA_AXIS))
    self.num_classes = NUM_CLASSES[name]
    self.data_dir = prepare_lib.resolve_data_dir(config.data_dir)
    self._cifar = name != "imagenet2012"
    size = int(config.image_size)
    if self._cifar and size != 32:
      raise ValueError(f"image_size={size} for {name}: CIFAR images are 32×32")
    self.image_shape = (size, size, 3)
    self._train_rows = _local_rows(self.sharding, self.global_batch_size)
    self._eval_rows = _local_rows(self.sharding, self.eval_batch_size)
    train = open_split(name, config.train_split, self.data_dir, decode_images=self._cifar)
    evaluation = open_split(name, config.eval_split, self.data_dir, decode_images=self._cifar)
    self.num_train_examples = len(train)
    self.num_eval_examples = len(evaluation)
    if self.num_train_examples < self.global_batch_size:
      raise ValueError(f"train split {config.train_split!r} has {self.num_train_examples} examples, "
                       f"fewer than global_batch_size={self.global_batch_size}")
    # Train drops each epoch's remainder; eval pads its last batch instead.
    self.steps_per_epoch = self.num_train_examples // self.global_batch_size
    self.num_eval_batches = math.ceil(self.num_eval_examples / self.eval_batch_size)
    if self._cifar:
      self._train_images, self._train_labels = _read_all(train, name, config.train_split)
      self._eval_images, self._eval_labels = _read_all(evaluation, name, config.eval_split)
      self._train_load = self._cifar_loader(self._train_images, self._train_labels)
      self._eval_load = self._cifar_loader(self._eval_images, self._eval_labels)
      mean, std = self._cifar_statistics()
      self.preprocess: Callable[..., jax.Array] = functools.partial(
          augment.cifar_preprocess, mean=mean, std=std, augment=bool(config.augment),
          padding=int(config.padding))
    else:
      if config.normalization != "per_channel":
        raise ValueError("imagenet2012 supports normalization='per_channel' (ImageNet statistics)")
      self._train_source, self._eval_source = train, evaluation
      self.preprocess = functools.partial(
          augment.imagenet_preprocess, mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD,
          lighting=bool(config.augment) and bool(config.pca_lighting))
    self.preprocess.__doc__ = ("preprocess(images_uint8, rng, train) -> float32 [B, H, W, C]; pure "
                               "and jittable (see resnet_jax.data.augment)")

  # ----------------------------------------------------------------- normalisation statistics

  def _cifar_statistics(self) -> Tuple[np.ndarray, np.ndarray]:
    """Statistics of the configured train split, on [0, 1] pixels."""
    images = self._train_images
    if self.config.normalization == "per_pixel_mean":
      mean = images.mean(axis=0, dtype=np.float64) / 255.0
      return mean.astype(np.float32), np.ones((3,), np.float32)
    pixels = images.reshape(-1, 3)
    mean = pixels.mean(axis=0, dtype=np.float64)
    std = np.sqrt(np.maximum((pixels.astype(np.float64) ** 2).mean(axis=0) - mean ** 2, 0.0))
    return (mean / 255.0).astype(np.float32), (std / 255.0).astype(np.float32)

  # ----------------------------------------------------------------------- per-example loaders

  @staticmethod
  def _cifar_loader(images: np.ndarray, labels: np.ndarray):
    def load(item):
      record = item[0] if isinstance(item, tuple) else item
      if record < 0:
        return {"image": np.zeros(images.shape[1:], np.uint8), "label": np.int32(0), "mask": False}
      return {"image": images[record], "label": labels[record], "mask": True}
    return load

  def _imagenet_train_load(self, item):
    from resnet_jax.data import imagenet  # pylint: disable=g-import-not-at-top
    record, example_seed = item
    example = self._train_source[record]
    rng = np.random.default_rng(example_seed)
    c, size = self.config, self.image_shape[0]
    if not c.augment:
      image = imagenet.decode_center(example["image"], size, int(c.eval_resize))
    elif c.train_augment == "scale":
      image = imagenet.decode_scale_augment(example["image"], rng, size, tuple(c.scale_range))
    elif c.train_augment == "inception":
      image = imagenet.decode_inception_augment(example["image"], rng, size, tuple(c.area_range),
                                                tuple(c.aspect_ratio_range))
    else:
      raise ValueError(f"train_augment={c.train_augment!r}; valid: 'scale', 'inception'")
    return {"image": image, "label": np.int32(example["label"])}

  def _imagenet_eval_load(self, record: int):
    from resnet_jax.data import imagenet  # pylint: disable=g-import-not-at-top
    c = self.config
    size = int(c.eval_resize) if c.ten_crop else self.image_shape[0]
    if record < 0:
      return {"image": np.zeros((size, size, 3), np.uint8), "label": np.int32(0), "mask": False}
    example = self._eval_source[record]
    return {"image": imagenet.decode_center(example["image"], size, int(c.eval_resize)),
            "label": np.int32(example["label"]), "mask": True}

  # ----------------------------------------------------------------------------- datasets

  def _to_iter(self, ds: grain.MapDataset) -> grain.IterDataset:
    c = self.config
    threads = 1 if self._cifar else max(int(c.num_threads), 1)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                              prefetch_buffer_size=max(int(c.prefetch_batches), threads)))
    if int(c.num_workers) > 0:
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(c.num_workers)))
    return it

  def _train_dataset(self, start_step: int) -> grain.IterDataset:
    lo, hi = self._train_rows
    ds = _TrainPositions(self.num_train_examples, self.global_batch_size, (lo, hi), self.seed,
                         start_step)
    load = (lambda item: {k: v for k, v in self._train_load(item).items() if k != "mask"}
            ) if self._cifar else self._imagenet_train_load
    return self._to_iter(ds.map(load).batch(hi - lo, drop_remainder=True))

  def _eval_dataset(self) -> grain.IterDataset:
    lo, hi = self._eval_rows
    ds = _EvalPositions(self.num_eval_examples, self.eval_batch_size, (lo, hi))
    load = self._eval_load if self._cifar else self._imagenet_eval_load
    return self._to_iter(ds.map(load).batch(hi - lo, drop_remainder=True))

  def _globalize(self, local: Dict[str, np.ndarray]) -> Batch:
    batch = self.eval_batch_size if "mask" in local else self.global_batch_size
    out = {}
    for key, value in local.items():
      value = np.asarray(value, np.int32 if key == "label" else None)
      out[key] = jax.make_array_from_process_local_data(self.sharding, value,
                                                        (batch,) + value.shape[1:])
    return out

  # ------------------------------------------------------------------------------- public

  def train_iterator(self) -> TrainIterator:
    """Infinite global batches {"image": uint8 [B, H, W, C], "label": int32 [B]}, from step 0."""
    return TrainIterator(self)

  def eval_iterator(self) -> Iterator[Batch]:
    """One pass, every example once; the last batch padded, {"image", "label", "mask"}."""
    for local in self._eval_dataset():
      yield self._globalize(local)


def create_pipeline(config: ml_collections.ConfigDict, global_batch_size: int, eval_batch_size: int,
                    mesh: Mesh, seed: int = 0) -> Pipeline:
  """The input pipeline of `config` (`default_config(name)`) for a 1-D mesh with axis "data".

  Raises ValueError when a batch size is not divisible by the devices on the mesh
  axis, FileNotFoundError (with the `resnet-jax prepare` command) when the dataset
  is not prepared.
  """
  logging.info("input pipeline %s: train %r, eval %r", config.name, config.train_split,
               config.eval_split)
  return Pipeline(config, global_batch_size, eval_batch_size, mesh, seed)
