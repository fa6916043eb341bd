"""Optax optimiser and learning-rate schedules of the papers.

* He et al. 2015 (§4.2, CIFAR): SGD, momentum 0.9, lr 0.1 divided by 10 at 32k and
  48k iterations, stop at 64k, batch 128, coupled L2 weight decay 1e-4; ResNet-110
  (and the pre-activation ResNet-1001 of He et al. 2016) warm up at 0.01 for ~400
  iterations before going back to 0.1.
* He et al. 2015 (§3.4, ImageNet), as reproduced by fb.resnet.torch: ÷10 every 30
  epochs.
* Xie et al. 2017 (ResNeXt, App. A, CIFAR): weight decay 5e-4, 300 epochs, ÷10 at
  epochs 150 and 225.
* Goyal et al. 2017: linear scaling rule lr = base × batch / reference with a
  linear warm-up; linear warm-up + cosine decay as an alternative schedule.
* Zhang et al. 2019 (Fixup; the authors' CIFAR code): the scalar biases and multipliers learn at
  a tenth of the learning rate (`optimizer.scaled_learning_rate_params` / `_factor`).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax



def _to_steps(value: float, unit: str, steps_per_epoch: int) -> int:
  if unit == "steps":
    return int(round(value))
  return int(round(value * steps_per_epoch))


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """`optimizer.learning_rate`, scaled by batch/reference when `schedule.reference_batch_size` is set."""
  lr = float(config.optimizer.learning_rate)
  if config.schedule.reference_batch_size:
    lr *= config.global_batch_size / float(config.schedule.reference_batch_size)
  return lr


def create_learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                                  num_train_steps: int) -> optax.Schedule:
  """The learning rate as a function of the (0-based) optimiser step.

  `config.schedule.unit` says whether `boundaries` and `warmup_length` count
  iterations (the CIFAR papers) or epochs (ImageNet, ResNeXt CIFAR).
  """
  s = config.schedule
  scale = config.global_batch_size / float(s.reference_batch_size) if s.reference_batch_size else 1.0
  peak = peak_learning_rate(config)
  warmup_steps = _to_steps(s.warmup_length, s.unit, steps_per_epoch)
  warmup_lr = float(s.warmup_learning_rate) * scale

  if s.name == "step":
    boundaries = sorted(_to_steps(b, s.unit, steps_per_epoch) for b in s.boundaries)
    main = optax.piecewise_constant_schedule(
        peak, {b: float(s.decay_factor) for b in boundaries if b > 0})
  elif s.name == "cosine":
    main = lambda count: peak * 0.5 * (1.0 + jnp.cos(
        jnp.pi * jnp.clip((count - warmup_steps) / max(num_train_steps - warmup_steps, 1), 0.0, 1.0)))
  else:
    main = optax.constant_schedule(peak)

  if warmup_steps <= 0:
    return main
  if s.warmup_mode == "constant":
    warm = optax.constant_schedule(warmup_lr)
  else:
    warm = optax.linear_schedule(warmup_lr, peak, warmup_steps)

  def schedule(count: jax.Array) -> jax.Array:
    return jnp.where(count < warmup_steps, warm(count), main(count))
  return schedule


def weight_decay_mask(params: Any, exclude: str) -> Any:
  """True for every parameter whose '/'-joined path does not match `exclude`.

  An empty pattern decays every parameter, as the papers' Torch/Caffe code did;
  `r"(bias|scale)$"` skips BatchNorm and biases (Flax examples, Goyal et al.).
  """
  pattern = re.compile(exclude) if exclude else None

  def keep(path, _):
    name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    return pattern is None or pattern.search(name) is None
  return jax.tree_util.tree_map_with_path(keep, params)


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate: optax.Schedule) -> optax.GradientTransformation:
  """SGD with (optionally Nesterov) momentum and coupled or decoupled weight decay.

  Coupled ("L2", the papers): g ← g + wd·w before momentum, so the decay is
  scaled by the learning rate and accumulated in the momentum buffer.
  Decoupled (Loshchilov & Hutter): w ← w − lr·(m + wd·w) without momentum on
  the decay term.
  """
  o = config.optimizer
  # An empty pattern decays everything: no mask at all (nothing to trace or to time).
  mask: Optional[Callable[[Any], Any]] = (
      (lambda params: weight_decay_mask(params, o.weight_decay_exclude)) if o.weight_decay_exclude else None)
  momentum = float(o.momentum) if o.momentum else None
  if o.weight_decay_mode == "coupled":
    parts = []
    if o.weight_decay:
      parts.append(optax.add_decayed_weights(float(o.weight_decay), mask=mask))
    parts.append(optax.sgd(learning_rate, momentum=momentum, nesterov=bool(o.nesterov)))
    return _with_scaled_learning_rates(optax.chain(*parts), o)
  parts = []
  if momentum is not None:
    parts.append(optax.trace(decay=momentum, nesterov=bool(o.nesterov)))
  if o.weight_decay:
    parts.append(optax.add_decayed_weights(float(o.weight_decay), mask=mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return _with_scaled_learning_rates(optax.chain(*parts), o)


def _with_scaled_learning_rates(tx: optax.GradientTransformation, o: ml_collections.ConfigDict
                                ) -> optax.GradientTransformation:
  """`tx` whose updates of the parameters matching `scaled_learning_rate_params` are multiplied by
  `scaled_learning_rate_factor`: their learning rate times the factor (PyTorch's parameter groups:
  SGD's momentum buffer does not depend on the learning rate). No pattern: `tx` itself."""
  pattern = o.get("scaled_learning_rate_params", "")
  if not pattern:
    return tx
  scaled = lambda params: jax.tree.map(lambda keep: not keep, weight_decay_mask(params, pattern))
  return optax.chain(tx, optax.masked(optax.scale(float(o.scaled_learning_rate_factor)), scaled))
