"""The generic Grain pipeline: deterministic, resumable, multi-host global batches of any dataset.

The sample stream is defined globally: epoch e is a permutation of the train split drawn
from (seed, e); global step s takes positions [s·B, (s+1)·B) of its epoch (the remainder
of an epoch is dropped, so `steps_per_epoch = floor(num_train / B)`). Each process reads
only the rows of each global batch that its devices hold, so the same seed gives the
same global batches on one host or many, and the iterator's state (the global step) is
valid for any host count. What differs between datasets (reading, host decoding,
statistics, on-device preprocessing) comes from the dataset's registered source
(`source.py`, `registry.py`).
"""
from __future__ import annotations

import functools
import logging
import math
import sys
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import grain
import jax
import ml_collections
import numpy as np
from absl import flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax import errors
from resnet_jax.data import device_resident
from resnet_jax.data import registry
from resnet_jax.data.prepare import resolve_data_dir
from resnet_jax.data.source import DatasetSource, ExampleSeed, OpenDataset
from resnet_jax.data.train_iterator import (  # noqa: F401  (re-exported)
    STATE_VERSION, TrainIterator, TrainStream, epoch_order, epoch_permutation)
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.runtime.mesh import DATA_AXIS

_LOG = logging.getLogger(__name__)  # under "resnet_jax": never Python's root logger

Batch = Dict[str, jax.Array]


def __getattr__(name: str) -> Any:
  """`NUM_CLASSES` ({dataset: classes}), derived from the registry; prefer `dataset_info(name)`."""
  if name == "NUM_CLASSES":
    return registry.num_classes()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Positions(grain.MapDataset):
  """Local example i -> what to load for it; this process holds rows `rows` of each global batch."""

  def __init__(self, num_records: int, global_batch: int, rows: Tuple[int, int]):
    super().__init__()
    self._n, self._b, self._rows = num_records, global_batch, rows

  def __str__(self) -> str:
    return f"{type(self).__name__[1:]}(n={self._n}, batch={self._b}, rows={self._rows})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    local = self._rows[1] - self._rows[0]
    return self._position(index // local, self._rows[0] + index % local)  # each kind of pass defines it


class _TrainPositions(_Positions):
  """(record index, example seed) of row `row` of global step `start_step + batch`."""

  def __init__(self, num_records: int, global_batch: int, rows: Tuple[int, int], seed: int, start_step: int,
               repeats: int = 1):
    super().__init__(num_records, global_batch, rows)
    self._seed, self._start, self._repeats = seed, start_step, repeats
    self._steps_per_epoch = num_records // global_batch

  def __len__(self) -> int:
    return sys.maxsize

  def _position(self, batch: int, row: int):
    step = self._start + batch
    epoch, within = divmod(step, self._steps_per_epoch)
    record = int(epoch_order(self._seed, epoch, self._n, self._repeats)[within * self._b + row])
    return record, (self._seed, step, row)


class _EvalPositions(_Positions):
  """The record index (-1: padding) of row `row` of eval batch `batch`, in split order."""

  def __len__(self) -> int:
    return math.ceil(self._n / self._b) * (self._rows[1] - self._rows[0])

  def _position(self, batch: int, row: int):
    position = batch * self._b + row
    return position if position < self._n else -1


# Per-example loaders: functions of the opened dataset only, so Grain's worker processes
# (`num_workers`) can pickle them.
def _load_train(dataset: OpenDataset, item: Tuple[int, ExampleSeed]) -> Dict[str, Any]:
  image, label = dataset.load_train(*item)
  return {"image": image, "label": label}


def _load_eval(dataset: OpenDataset, padding_shape: Tuple[int, ...], record: int) -> Dict[str, Any]:
  if record < 0:  # padding of the last batch, masked out
    return {"image": np.zeros(padding_shape, np.uint8), "label": np.int32(0), "mask": False}
  image, label = dataset.load_eval(record)
  return {"image": image, "label": label, "mask": True}


def _local_rows(sharding: NamedSharding, global_batch: int) -> Tuple[int, int]:
  """The contiguous block of batch rows held by this process's devices."""
  starts, stops = set(), set()
  for index in sharding.addressable_devices_indices_map((global_batch,)).values():
    rows = index[0]
    starts.add(rows.start or 0)
    stops.add(global_batch if rows.stop is None else rows.stop)
  lo, hi = min(starts), max(stops)
  if hi - lo != len(starts) * (global_batch // sharding.mesh.shape[DATA_AXIS]):
    raise errors.InputError("this process's devices are not contiguous on the mesh axis 'data'; build the "
                     "mesh from jax.devices() (process-major order)")
  return lo, hi


class Pipeline:
  """Train and eval batches of one registered dataset for a mesh; see `create_pipeline`.

  `config`, `seed`, `global_batch_size`, `mesh` and `sharding` are as given.

  Attributes:
    eval_batch_size: as given, at most the eval split (rounded up to the devices).
    source: the dataset's registered `DatasetSource`.
    dataset: its opened splits.
    num_classes: the dataset's classes.
    image_shape: the network input.
    eval_image_shape: the eval batches' images.
    num_train_examples: the train split's examples.
    num_eval_examples: the eval split's examples.
    steps_per_epoch: whole global batches per epoch.
    num_eval_batches: eval batches per pass, the last padded.
    placement: "device" (train batches gathered on the devices) or "host" (Grain), from
      `config.placement` ("auto" | "device" | "host"; see `device_resident.py`).
    preprocess: `preprocess(images_uint8, rng, train) -> float32 [B, H, W, C]`, pure and
      jittable, for the train and eval steps.
    eval_preprocessing: the eval-time transform as data (`preprocessing.Preprocessing`), which
      a training run records with its weights; None for a dataset that does not give one.
  """

  def __init__(self, config: ml_collections.ConfigDict, global_batch_size: int, eval_batch_size: int,
               mesh: Optional[Mesh] = None, seed: int = 0):
    source = registry.dataset_source(config.name)
    mesh = mesh_lib.create_mesh() if mesh is None else mesh
    if DATA_AXIS not in mesh.axis_names:
      raise errors.InputError(f"mesh axes {mesh.axis_names} have no {DATA_AXIS!r} axis; build a 1-D mesh "
                       f"named {DATA_AXIS!r} over all devices")
    num_shards = mesh.shape[DATA_AXIS]
    for what, size in (("global_batch_size", global_batch_size), ("eval_batch_size", eval_batch_size)):
      if size <= 0 or size % num_shards:
        raise errors.InputError(f"{what}={size} is not a positive multiple of the {num_shards} devices on "
                         f"the mesh axis {DATA_AXIS!r}")
    self.config = config
    self.seed = int(seed)
    self.global_batch_size = int(global_batch_size)
    self.eval_batch_size = int(eval_batch_size)
    self.mesh = mesh
    self.sharding = NamedSharding(mesh, P(DATA_AXIS))
    self.source: DatasetSource = source
    self.num_classes = source.info.num_classes
    self.data_dir = resolve_data_dir(config.data_dir)
    self._train_rows = _local_rows(self.sharding, self.global_batch_size)
    self.dataset: OpenDataset = source.open(config, self.data_dir)
    self.image_shape = tuple(self.dataset.image_shape)
    self.eval_image_shape = tuple(self.dataset.eval_image_shape)
    self.num_train_examples = int(self.dataset.num_train_examples)
    self.num_eval_examples = int(self.dataset.num_eval_examples)
    # An eval batch larger than the split (rounded up to the devices) would only be padding,
    # and an absurd one (10**9) would fail to allocate after training: bounded here.
    whole_split = max(-(-self.num_eval_examples // num_shards), 1) * num_shards
    self.eval_batch_size = min(self.eval_batch_size, whole_split)
    self._eval_rows = _local_rows(self.sharding, self.eval_batch_size)
    if self.num_train_examples < self.global_batch_size:
      raise errors.InputError(f"train split {config.train_split!r} has {self.num_train_examples} examples, "
                       f"fewer than global_batch_size={self.global_batch_size}")
    # Train drops each epoch's remainder; eval pads its last batch instead.
    self.steps_per_epoch = self.num_train_examples // self.global_batch_size
    self.num_eval_batches = math.ceil(self.num_eval_examples / self.eval_batch_size)
    self.preprocess: Callable[..., jax.Array] = self.dataset.preprocess
    self.eval_preprocessing = self.dataset.eval_preprocessing()
    self.placement = device_resident.resolve_placement(
        str(config.get("placement", "auto")), self.dataset.train_arrays(), mesh.devices.flat, config.name)
    self.train_stream = TrainStream(config.name, config.train_split, self.num_train_examples,
                                    self.global_batch_size, self.seed, mesh, self.sharding,
                                    self._train_dataset, self._globalize,
                                    repeats=int(config.get("repeated_augmentation", 1)))

  # ----------------------------------------------------------------------------- datasets

  def _to_iter(self, ds: grain.MapDataset) -> grain.IterDataset:
    c = self.config
    threads = max(int(self.dataset.read_threads), 1)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                              prefetch_buffer_size=max(int(c.prefetch_batches), threads)))
    if int(c.num_workers) > 0:
      if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; argparse programs never parse them
        flags.FLAGS.mark_as_parsed()
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(c.num_workers)))
    return it

  def _train_dataset(self, start_step: int, seed: int) -> grain.IterDataset:
    lo, hi = self._train_rows
    ds = _TrainPositions(self.num_train_examples, self.global_batch_size, (lo, hi), seed,
                         start_step, self.train_stream.repeats)
    load = functools.partial(_load_train, self.dataset)
    return self._to_iter(ds.map(load).batch(hi - lo, drop_remainder=True))

  def _eval_dataset(self) -> grain.IterDataset:
    lo, hi = self._eval_rows
    ds = _EvalPositions(self.num_eval_examples, self.eval_batch_size, (lo, hi))
    load = functools.partial(_load_eval, self.dataset, tuple(self.eval_image_shape))
    return self._to_iter(ds.map(load).batch(hi - lo, drop_remainder=True))

  def _globalize(self, local: Dict[str, np.ndarray], steps: int = 1) -> Batch:
    """Process-local rows -> global arrays; with `steps` > 1 the rows of `steps` batches."""
    batch = self.eval_batch_size if "mask" in local else self.global_batch_size
    lead, sharding = ((), self.sharding) if steps == 1 else (
        (steps,), NamedSharding(self.mesh, P(None, DATA_AXIS)))
    out = {}
    for key, value in local.items():
      value = np.asarray(value, np.int32 if key == "label" else None)
      shape = lead + (batch,) + value.shape[len(lead) + 1:]
      out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
    return out

  # ------------------------------------------------------------------------------- public

  def train_iterator(self, seed: Optional[int] = None) -> TrainIterator:
    """Infinite global batches {"image": uint8 [B, H, W, C], "label": int32 [B]}, from step 0,
    in the order of `seed` (default: the pipeline's).

    With `placement` "device" the batches are gathered on the devices from a copy of the
    split made for this iterator (`device_resident.py`); the same batches either way.
    """
    return self.train_iterators([seed])[0]

  def train_iterators(self, seeds) -> list:
    """One iterator per seed (None: the pipeline's); device-resident ones share one copy of the split."""
    if self.placement == "device":
      split = device_resident.upload(self.mesh, *self.dataset.train_arrays())
      return [device_resident.DeviceResidentTrainIterator(self.train_stream, *split, seed=s) for s in seeds]
    return [TrainIterator(self.train_stream, seed=s) for s in seeds]

  def eval_iterator(self) -> Iterator[Batch]:
    """One pass, every example once; the last batch padded, {"image", "label", "mask"}."""
    for local in self._eval_dataset():
      yield self._globalize(local)


def create_pipeline(config: ml_collections.ConfigDict, global_batch_size: int, eval_batch_size: int,
                    mesh: Optional[Mesh] = None, seed: int = 0) -> Pipeline:
  """The input pipeline of `config` (`default_config(name)`) on a 1-D mesh with axis "data".

  `mesh` None: a 1-D mesh named "data" over `jax.devices()`. Raises ValueError for an
  unknown dataset or when a batch size is not divisible by the devices on the mesh
  axis, FileNotFoundError (with the `resnet-jax prepare` command) when the dataset is
  not prepared.
  """
  _LOG.info("input pipeline %s: train %r, eval %r", config.name, config.train_split,
               config.eval_split)
  return Pipeline(config, global_batch_size, eval_batch_size, mesh, seed)
