"""The train state: everything a resumed run needs besides the data position."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.train import ema as ema_lib


class TrainState(struct.PyTreeNode):
  """Parameters, BatchNorm running statistics, optimiser state, step and RNG.

  `rng` is a raw uint32 key (serialisable as a plain array); the randomness of
  step t is `fold_in(rng, t)`, so a resumed run draws the same numbers.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


class EmaTrainState(TrainState):
  """A `TrainState` with the moving average of the weights (`ema.py`), for a config that keeps
  one: a run without it has the state (and the checkpoint tree) it had before EMAs existed."""
  ema: Any


def ema_of(state: TrainState) -> Optional[Any]:
  """The state's `{"params", "batch_stats"}` moving average, None when the run keeps none."""
  return getattr(state, "ema", None)


def _init_fn(model: nn.Module, tx: optax.GradientTransformation,
             input_shape: Sequence[int], seed: int, ema: bool = False):
  def init() -> TrainState:
    params_key, rng = jax.random.split(jax.random.PRNGKey(seed))
    variables = model.init({"params": params_key, "dropout": params_key},
                           jnp.zeros((1, *input_shape), jnp.float32), train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    fields = dict(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                  opt_state=tx.init(params), rng=rng)
    if ema:
      return EmaTrainState(**fields, ema=ema_lib.initial(params, batch_stats))
    return TrainState(**fields)
  return init


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                       input_shape: Sequence[int], seed: int, ema: bool = False) -> TrainState:
  """Initialises the state directly replicated over `mesh` (He et al. 2015 init lives in the model).

  Initialisation runs replicated, so the sharding-invariant ("partitionable")
  threefry that the train step's augmentation needs buys nothing here, and it
  makes XLA's compile of the initialisers about 5x slower on CPU.
  """
  with jax.threefry_partitionable(False):
    return jax.jit(_init_fn(model, tx, input_shape, seed, ema),
                   out_shardings=mesh_lib.replicated(mesh))()


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                         input_shape: Sequence[int], seed: int, ema: bool = False) -> TrainState:
  """Shapes, dtypes and shardings of the state, without allocating it (for restores)."""
  with jax.threefry_partitionable(False):
    shapes = jax.eval_shape(_init_fn(model, tx, input_shape, seed, ema))
  sharding = mesh_lib.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
