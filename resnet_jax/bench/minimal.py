"""The reference the benchmark compares our train step with: a minimal Flax train step.

What a user writes from the Flax documentation: a plain ResNet of `nn.Conv`, `nn.BatchNorm`
(statistics over the whole batch) and ReLU, one `jax.jit` over `(params, batch_stats,
opt_state, batch)`, Optax SGD with momentum and L2 weight decay, cross-entropy. It has the
stage table, widths, block type, stem and shortcut kind of the network it stands in for
(same multiply-adds), and none of the engine's extras (BatchNorm groups, on-device crop and
flip, metrics, the NaN guard). It only normalises the uint8 batch.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resnet_jax import errors
from resnet_jax import models


class Block(nn.Module):
  """conv-BN-ReLU-conv-BN (+ the bottleneck's 1x1s), add the shortcut, ReLU."""
  features: int
  inner: int | None   # bottleneck width; None: a basic block
  strides: int
  cardinality: int
  zero_pad_shortcut: bool
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s=1, g=1, name=None: nn.Conv(f, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2,
                                                     use_bias=False, feature_group_count=g,
                                                     dtype=self.dtype, name=name)
    norm = lambda name=None: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                          dtype=self.dtype, name=name)
    if self.inner is None:
      y = nn.relu(norm()(conv(self.features, 3, self.strides)(x)))
      y = norm()(conv(self.features, 3)(y))
    else:
      y = nn.relu(norm()(conv(self.inner, 1)(x)))
      y = nn.relu(norm()(conv(self.inner, 3, self.strides, self.cardinality)(y)))
      y = norm()(conv(self.features, 1)(y))
    if x.shape != y.shape:
      if self.zero_pad_shortcut:  # option A: subsample, pad the new channels with zeros
        x = x[:, ::self.strides, ::self.strides]
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
      else:                       # option B: 1x1 projection
        x = norm(name="proj_bn")(conv(self.features, 1, self.strides, name="proj")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  stem: str                  # "cifar": 3x3 conv; "imagenet": 7x7/2 conv, 3x3/2 max-pool
  stem_width: int
  stages: Sequence[Tuple[int, int, int | None, int]]  # (units, features, inner, strides)
  cardinality: int
  zero_pad_shortcut: bool
  num_classes: int
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    k, s = (3, 1) if self.stem == "cifar" else (7, 2)
    x = nn.Conv(self.stem_width, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2, use_bias=False,
                dtype=self.dtype)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=self.dtype)(x))
    if self.stem != "cifar":
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for units, features, inner, strides in self.stages:
      for unit in range(units):
        x = Block(features, inner, strides if unit == 0 else 1, self.cardinality, self.zero_pad_shortcut,
                  self.dtype)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


def like(model: models.ResNet) -> ResNet:
  """The minimal network with `model`'s stage table, widths, block type, stem and shortcut.

  Always the original unit order (He et al. 2015): for a pre-activation network it has the
  same convolutions, and BatchNorms in the original places.
  """
  if model.stem not in ("cifar", "imagenet"):
    raise errors.InputError(f"the minimal reference has the 'cifar' and 'imagenet' stems, not stem={model.stem!r}")
  stages = []
  for stage, units in enumerate(model.stage_sizes):
    features, inner = model.unit_features(stage)
    stages.append((int(units), int(features), inner, int(model.strides_of(stage))))
  return ResNet(model.stem, int(model.stem_width), tuple(stages), int(model.cardinality),
                model.shortcut == "A", int(model.num_classes), model.dtype)


def train_step(net: ResNet, learning_rate: float = 0.1, momentum: float = 0.9,
               weight_decay: float = 1e-4) -> Tuple[Callable, optax.GradientTransformation]:
  """(jitted `(variables, opt_state, batch) -> (variables, opt_state, loss)`, the Optax optimiser)."""
  tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum))

  def step(variables, opt_state, batch: Dict[str, jax.Array]):
    images = batch["image"].astype(jnp.float32) / 255.0 - 0.5

    def loss_fn(params):
      logits, updates = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, images,
                                  train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
      return loss, updates["batch_stats"]
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    return {"params": params, "batch_stats": batch_stats}, opt_state, loss
  return jax.jit(step, donate_argnums=(0, 1)), tx


def init(net: ResNet, tx: optax.GradientTransformation, image_shape: Sequence[int], seed: int = 0):
  """(variables, opt_state) of `net`, float32 parameters."""
  with jax.threefry_partitionable(False):
    variables = jax.jit(lambda: net.init(jax.random.PRNGKey(seed), jnp.zeros((1, *image_shape)),
                                         train=False))()
  variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  return variables, jax.jit(tx.init)(variables["params"])


def count_params(variables) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"])))
