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
* MLPerf ResNet-50 v1.5 (mlcommons/training, image_classification/tensorflow2/lars_util.py):
  polynomial decay of power 2 after the warm-up.
* Zhang et al. 2019 (Fixup; the authors' CIFAR code): the scalar biases and multipliers learn at
  a tenth of the learning rate (`optimizer.scaled_learning_rate_params` / `_factor`).

Optimisers (`optimizer.name`): SGD as the papers; AdamW (Loshchilov & Hutter 2019, torch's
`AdamW`); LAMB (You et al. 2020, timm's `Lamb`, which "ResNet strikes back" trains with);
LARS (You et al. 2017, as MLPerf's ResNet-50 and timm's `Lars`). For LAMB and LARS the
parameters that `weight_decay_exclude` names (BatchNorm and biases) get neither weight decay
nor a trust ratio, as MLPerf's `skip_list` and timm's no-decay parameter group. Optional
global-norm gradient clipping comes first in every chain; the scaled learning rates of
`scaled_learning_rate_params` apply to every optimiser.
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
  elif s.name == "polynomial":
    main = polynomial_decay(peak, float(s.end_learning_rate), float(s.power), warmup_steps, num_train_steps)
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


def polynomial_decay(peak: float, end: float, power: float, warmup_steps: int, num_train_steps: int
                     ) -> optax.Schedule:
  """MLPerf's `PolynomialDecayWithWarmup` after its warm-up: (peak − end)·(1 − s/D)^power + end,
  s = count − warm-up steps, over D = total − warm-up + 1 steps (the reference's decay_steps,
  so the last step's rate stays above `end`)."""
  decay_steps = max(num_train_steps - warmup_steps + 1, 1)

  def schedule(count: jax.Array) -> jax.Array:
    fraction = jnp.clip((count - warmup_steps) / decay_steps, 0.0, 1.0)
    return (peak - end) * (1.0 - fraction) ** power + end
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


def _decay_mask(o: ml_collections.ConfigDict) -> Optional[Callable[[Any], Any]]:
  """The parameters that get weight decay (and, for LAMB/LARS, a trust ratio); None: all.

  An empty pattern decays everything: no mask at all (nothing to trace or to time).
  """
  if not o.weight_decay_exclude:
    return None
  return lambda params: weight_decay_mask(params, o.weight_decay_exclude)


def sgd(o: ml_collections.ConfigDict, learning_rate: optax.Schedule) -> optax.GradientTransformation:
  """SGD with (optionally Nesterov) momentum and coupled or decoupled weight decay.

  Coupled ("L2", the papers): g ← g + wd·w before momentum, so the decay is
  scaled by the learning rate and accumulated in the momentum buffer.
  Decoupled (Loshchilov & Hutter): w ← w − lr·(m + wd·w) without momentum on
  the decay term.
  """
  mask = _decay_mask(o)
  momentum = float(o.momentum) if o.momentum else None
  if o.weight_decay_mode == "coupled":
    parts = []
    if o.weight_decay:
      parts.append(optax.add_decayed_weights(float(o.weight_decay), mask=mask))
    parts.append(optax.sgd(learning_rate, momentum=momentum, nesterov=bool(o.nesterov)))
    return optax.chain(*parts)
  parts = []
  if momentum is not None:
    parts.append(optax.trace(decay=momentum, nesterov=bool(o.nesterov)))
  if o.weight_decay:
    parts.append(optax.add_decayed_weights(float(o.weight_decay), mask=mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def adamw(o: ml_collections.ConfigDict, learning_rate: optax.Schedule) -> optax.GradientTransformation:
  """AdamW (Loshchilov & Hutter 2019) as torch.optim.AdamW: w ← w − lr·(m̂/(√v̂ + ε) + wd·w)."""
  return optax.adamw(learning_rate, b1=float(o.b1), b2=float(o.b2), eps=float(o.eps),
                     weight_decay=float(o.weight_decay), mask=_decay_mask(o))


def _only_where(mask: Optional[Callable[[Any], Any]], inner: optax.GradientTransformation
                ) -> optax.GradientTransformation:
  return inner if mask is None else optax.masked(inner, mask)


def lamb(o: ml_collections.ConfigDict, learning_rate: optax.Schedule) -> optax.GradientTransformation:
  """LAMB (You et al. 2020) as timm's `Lamb`: the Adam step plus decoupled weight decay, scaled
  by the trust ratio ‖w‖/‖update‖ (1 where either is 0) on the decayed parameters only.

  Optax's `lamb` applies the trust ratio to every parameter; timm (and "ResNet strikes back")
  leaves the no-decay group (BatchNorm, biases) at the plain Adam step. timm's `Lamb` also
  clips the global gradient norm at 1.0 itself (`max_grad_norm`): set `clip_grad_norm` = 1.
  """
  mask = _decay_mask(o)
  return optax.chain(optax.scale_by_adam(b1=float(o.b1), b2=float(o.b2), eps=float(o.eps)),
                     optax.add_decayed_weights(float(o.weight_decay), mask=mask),
                     _only_where(mask, optax.scale_by_trust_ratio()),
                     optax.scale_by_learning_rate(learning_rate))


def scale_by_lars_trust_ratio(trust_coefficient: float, weight_decay: float, eps: float
                              ) -> optax.GradientTransformation:
  """MLPerf's LARS update direction: (g + wd·w)·η‖w‖/(‖g‖ + wd‖w‖ + ε), 1 where ‖w‖ or ‖g‖ is 0.

  The denominator adds the norms (MLPerf, timm); Optax's `lars` takes the norm of g + wd·w.
  """
  def direction(g: jax.Array, w: jax.Array) -> jax.Array:
    w_norm, g_norm = jnp.linalg.norm(w), jnp.linalg.norm(g)
    ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
    ratio = jnp.where((w_norm > 0) & (g_norm > 0), ratio, 1.0)
    return (g + weight_decay * w) * ratio
  return optax.stateless_with_tree_map(direction)


def lars(o: ml_collections.ConfigDict, learning_rate: optax.Schedule) -> optax.GradientTransformation:
  """LARS (You et al. 2017) as MLPerf's ResNet-50 and timm's `Lars`: the trust-ratio direction on
  the decayed parameters (the skipped ones, BatchNorm and biases, take the plain gradient),
  then momentum, then the learning rate.

  As timm (and this engine's SGD), the momentum buffer holds the directions and the learning
  rate scales the step; MLPerf's buffer holds lr-scaled directions, which differs only while
  the learning rate changes (warm-up, decay) by the ratio of consecutive rates.
  """
  momentum = float(o.momentum) if o.momentum else None
  parts = [_only_where(_decay_mask(o), scale_by_lars_trust_ratio(
      float(o.trust_coefficient), float(o.weight_decay), float(o.eps)))]
  if momentum is not None:
    parts.append(optax.trace(decay=momentum, nesterov=bool(o.nesterov)))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


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


OPTIMIZERS = {"sgd": sgd, "adamw": adamw, "lamb": lamb, "lars": lars}


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate: optax.Schedule) -> optax.GradientTransformation:
  """The optimiser `config.optimizer.name` names (SGD when the config predates the field), with
  the learning rates of `scaled_learning_rate_params` scaled, after global-norm gradient
  clipping when `optimizer.clip_grad_norm` is positive."""
  o = config.optimizer
  tx = _with_scaled_learning_rates(OPTIMIZERS[o.get("name", "sgd")](o, learning_rate), o)
  if o.get("clip_grad_norm", 0.0):
    return optax.chain(optax.clip_by_global_norm(float(o.clip_grad_norm)), tx)
  return tx
