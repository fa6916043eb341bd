"""Device-resident train batches: the split placed on the mesh once, each batch gathered there.

For a dataset held in memory without host-side augmentation (CIFAR: 50,000 uint8 images
are 150 MB), the host pipeline's per-step work (indexing 128 records, stacking them,
copying the batch to the devices: ~2 ms per batch on one core, as long as an H100 takes
for a whole ResNet-20 step) is not needed: the train split is copied to every device
once, and each step's batch is gathered there by index. The indices are the host
pipeline's (`pipeline.py`: epoch e is the permutation drawn from (seed, e), step s takes
positions [s·B, (s+1)·B) of it), uploaded once per epoch, so the batches are identical
to the host pipeline's, and the iterator's state (the global step) and resume are the
same: a run may resume on either placement.

`data.placement` chooses: "auto" (default) keeps the split on the devices when the
dataset offers its arrays (`OpenDataset.train_arrays`) and they take at most
`MAX_DEVICE_FRACTION` of the smallest device memory the backend reports (the CPU
reports none: its "device" memory is the host's, which already holds the arrays);
"device" insists (an error when impossible); "host" keeps the Grain pipeline.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import errors
from resnet_jax.data.train_iterator import TrainIterator, TrainStream, epoch_order

_LOG = logging.getLogger(__name__)  # under "resnet_jax": never Python's root logger

PLACEMENTS = ("auto", "device", "host")
MAX_DEVICE_FRACTION = 0.25  # of each device's memory; the rest is the network's


def device_memory_bytes(devices) -> Optional[int]:
  """The smallest memory limit of `devices`, or None when the backend reports none (CPU)."""
  limits = []
  for d in devices:
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except  # backends without the call raise
      stats = None
    if stats and stats.get("bytes_limit"):
      limits.append(int(stats["bytes_limit"]))
  return min(limits) if limits else None


def resolve_placement(placement: str, arrays: Optional[Tuple[np.ndarray, np.ndarray]], devices,
                      dataset: str) -> str:
  """"device" or "host" for `data.placement` and the dataset's in-memory train arrays."""
  if placement not in PLACEMENTS:
    raise errors.InputError(f"data.placement={placement!r} is not one of {PLACEMENTS}")
  if placement == "host":
    return "host"
  if arrays is None:
    if placement == "device":
      raise errors.InputError(f"data.placement='device' but {dataset} is not held in memory as arrays "
                       "(its examples are decoded or augmented on the host); use 'host' or 'auto'")
    return "host"
  size = sum(int(a.nbytes) for a in arrays)
  limit = device_memory_bytes(devices)
  if limit is not None and size > MAX_DEVICE_FRACTION * limit:
    if placement == "device":
      raise errors.InputError(f"data.placement='device': the {dataset} train split takes {size / 2**20:,.0f} MiB, "
                       f"more than {MAX_DEVICE_FRACTION:.0%} of the {limit / 2**30:.1f} GiB of device "
                       "memory; use 'host' or 'auto'")
    return "host"
  return "device"


def _replicated(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """`array` on every device of the mesh (each process supplies its own devices' copies)."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _gather(images, labels, permutation, start, *, batch: int, steps: int):
  """Rows `permutation[start:start + steps·batch]`, as `steps` batches (one: no leading axis)."""
  index = jax.lax.dynamic_slice_in_dim(permutation, start, steps * batch)
  out = {"image": jnp.take(images, index, axis=0, mode="clip"),
         "label": jnp.take(labels, index, axis=0, mode="clip")}
  shape = (steps, batch) if steps > 1 else (batch,)
  return {k: v.reshape(shape + v.shape[1:]) for k, v in out.items()}


def _stack(batches):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *batches)


def upload(mesh, images: np.ndarray, labels: np.ndarray) -> Tuple[jax.Array, jax.Array]:
  """The train split (uint8 images, labels) on every device of `mesh`, once."""
  if images.dtype != np.uint8 or len(images) != len(labels):
    raise errors.InputError(f"train arrays {images.dtype} {images.shape} for {len(labels)} labels; "
                     "expected uint8 [N, H, W, C] and N labels")
  replicated = NamedSharding(mesh, P())
  _LOG.info("device-resident train split: %s images, %.0f MiB per device", images.shape,
               (images.nbytes + labels.nbytes) / 2**20)
  return _replicated(images, replicated), _replicated(np.asarray(labels, np.int32), replicated)


class DeviceResidentTrainIterator(TrainIterator):
  """A `TrainIterator` whose batches are gathered on the devices: same batches, same state.

  The split and each epoch's permutation are uploaded once; a step's only host work is
  dispatching the gather (one dispatch for the K batches of `take(K)`). `images`/`labels`:
  the split as numpy arrays, or already on the devices (`upload`; iterators of packed runs
  share one copy).
  """

  def __init__(self, stream: TrainStream, images, labels, step: int = 0, seed: Optional[int] = None):
    super().__init__(stream, step, seed)
    mesh = stream.mesh
    if not isinstance(images, jax.Array):
      images, labels = upload(mesh, images, labels)
    self._replicated = NamedSharding(mesh, P())
    self._steps_sharding = NamedSharding(mesh, P(None, *stream.sharding.spec))
    self.images, self.labels = images, labels
    self._stack = jax.jit(_stack, out_shardings=self._steps_sharding)
    self._gathers: Dict[int, Any] = {}  # steps -> jitted gather, sharded as the host pipeline's
    self._epoch: Optional[int] = None
    self._permutation: Optional[jax.Array] = None

  def _permutation_of(self, epoch: int) -> jax.Array:
    """The host pipeline's permutation of `epoch`, on every device (uploaded once per epoch)."""
    if epoch != self._epoch:
      order = epoch_order(self.seed, epoch, self._stream.num_examples, self._stream.repeats).astype(np.int32)
      self._permutation = _replicated(order, self._replicated)
      self._epoch = epoch
    return self._permutation

  def _gather(self, steps: int) -> Dict[str, jax.Array]:
    """The global batches of steps [step, step + steps), all within one epoch."""
    b = self._stream.global_batch_size
    if steps not in self._gathers:
      self._gathers[steps] = jax.jit(
          functools.partial(_gather, batch=b, steps=steps),
          out_shardings=self._steps_sharding if steps > 1 else self._stream.sharding)
    epoch, within = divmod(self._step, self._stream.steps_per_epoch)
    out = self._gathers[steps](self.images, self.labels, self._permutation_of(epoch), np.int32(within * b))
    self._step += steps
    return out

  def __next__(self) -> Dict[str, jax.Array]:
    return self._gather(1)

  def take(self, steps: int) -> Dict[str, jax.Array]:
    per_epoch = self._stream.steps_per_epoch
    if steps == 1 or self._step // per_epoch == (self._step + steps - 1) // per_epoch:
      return self._gather(steps)
    # Across an epoch boundary (once per epoch at most): batch by batch, stacked on device.
    return self._stack([next(self) for _ in range(steps)])
