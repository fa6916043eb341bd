"""The order of the train examples, and the iterator that walks it resumably.

The sample stream is defined globally: epoch e is a permutation of the train split drawn
from (seed, e); global step s takes positions [s·B, (s+1)·B) of its epoch (the remainder
of an epoch is dropped). A `TrainStream` describes that stream for one mesh and how to read
it (the pipeline makes one); `TrainIterator` reads its batches through the pipeline's Grain
datasets; `device_resident.DeviceResidentTrainIterator` gathers the same batches on the
devices. Both resume from `get_state()`, which holds the next global step.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax import errors

STATE_VERSION = 1
Batch = Dict[str, jax.Array]


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of the `n` train records in `epoch`: global step s of the epoch takes [s·B, (s+1)·B)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, n: int, repeats: int = 1) -> np.ndarray:
  """`epoch_permutation`, with repeated augmentation (Hoffer et al. 2020) when `repeats` > 1:
  each record of the permutation `repeats` times in a row, the epoch its first `n` positions
  (timm's `RepeatAugSampler`: an epoch as long as without, 1/repeats of it distinct). A
  function of (seed, epoch) only, so every host count reads the same stream; the copies of
  an example sit in the same global batch (another device's rows, as timm's), each
  augmented with its own row's draws."""
  order = epoch_permutation(seed, epoch, n)
  return order if repeats == 1 else np.repeat(order, repeats)[:n]


@dataclasses.dataclass(frozen=True)
class TrainStream:
  """The global sample stream of one train split on one mesh, and how to read it.

  `read(start_step, seed)` gives this process's rows of each global batch from `start_step`
  on, as numpy arrays; `globalize(local, steps)` makes them global arrays on the mesh (the
  rows of `steps` batches when > 1).
  """
  dataset: str
  split: str
  num_examples: int
  global_batch_size: int
  seed: int
  mesh: Mesh
  sharding: NamedSharding
  read: Callable[[int, int], Iterable[Dict[str, np.ndarray]]]
  globalize: Callable[..., Batch]
  repeats: int = 1   # data.repeated_augmentation (`epoch_order`)

  @property
  def steps_per_epoch(self) -> int:
    return self.num_examples // self.global_batch_size


class TrainIterator:
  """Infinite iterator of global train batches; `get_state`/`set_state` resume exactly.

  `seed` (default: the stream's) draws the epochs' permutations: packed runs read one
  pipeline, each in its own order.
  """

  def __init__(self, stream: TrainStream, step: int = 0, seed: Optional[int] = None):
    self._stream = stream
    self._step = step
    self.seed = stream.seed if seed is None else int(seed)
    self._it: Optional[Iterator[Any]] = None

  def __iter__(self) -> "TrainIterator":
    return self

  def _next_local(self) -> Dict[str, np.ndarray]:
    if self._it is None:
      self._it = iter(self._stream.read(self._step, self.seed))
    local = next(self._it)
    self._step += 1
    return local

  def __next__(self) -> Batch:
    return self._stream.globalize(self._next_local())

  def take(self, steps: int) -> Batch:
    """The next `steps` global batches in one: every leaf [steps, B, ...] (`steps_per_dispatch`)."""
    if steps == 1:
      return next(self)
    locals_ = [self._next_local() for _ in range(steps)]
    stacked = {k: np.stack([np.asarray(b[k]) for b in locals_]) for k in locals_[0]}
    return self._stream.globalize(stacked, steps)

  def _fingerprint(self) -> Dict[str, Any]:
    s = self._stream
    repeats = {"repeated_augmentation": s.repeats} if s.repeats != 1 else {}  # absent: states from before it
    return {"dataset": s.dataset, "split": s.split, "seed": self.seed, "global_batch_size": s.global_batch_size,
            "num_examples": s.num_examples, "version": STATE_VERSION, **repeats}

  def get_state(self) -> Dict[str, Any]:
    """JSON-serialisable: the next global step and what defines the sample stream."""
    return {"step": self._step, **self._fingerprint()}

  def set_state(self, state: Dict[str, Any]) -> None:
    expected = self._fingerprint()
    diff = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if diff:
      raise errors.InputError(f"data iterator state does not match this pipeline (saved, now): {diff}; "
                       "resume with the same dataset, split, seed and global batch size")
    self._step = int(state["step"])
    self._it = None


def _stack_runs(batches, axis: int):
  return jax.tree.map(lambda *xs: jnp.stack(xs, axis=axis), *batches)


class PackedTrainIterator:
  """The batches of packed runs, one iterator per run, stacked on a run axis.

  `next()` gives every leaf [R, B, ...]; `take(K)` gives [K, R, B, ...] (the step axis
  first, as the K-step dispatch scans it). Each run keeps its own iterator, order and
  state (`iterators[r].get_state()`), exactly as when it trains alone.
  """

  def __init__(self, iterators, mesh, data_axis: str):
    self.iterators = list(iterators)
    sharding = lambda *spec: NamedSharding(mesh, P(*spec))
    self._stack = jax.jit(functools.partial(_stack_runs, axis=0), out_shardings=sharding(None, data_axis))
    self._stack_k = jax.jit(functools.partial(_stack_runs, axis=1), out_shardings=sharding(None, None, data_axis))

  def __iter__(self) -> "PackedTrainIterator":
    return self

  def __next__(self) -> Batch:
    return self._stack([next(it) for it in self.iterators])

  def take(self, steps: int) -> Batch:
    if steps == 1:
      return next(self)
    return self._stack_k([it.take(steps) for it in self.iterators])
