"""The parts of the train step that the modern recipes turn on, built from the runs' configs.

`step.py` composes them; each is absent when its config fields are at their defaults, so the
papers' configs compile to the program they compiled to before these parts existed
(`tests/test_recipes.py` compares the lowered programs). Packed runs share a part's structure
(`packing.py`) and may differ in its values: `per_run` picks each run's own.

* `loss`: softmax cross-entropy (label smoothing as the papers'; on soft targets when the
  batch is mixed, timm's `SoftTargetCrossEntropy`) or binary cross-entropy on the (mixed,
  smoothed) one-hot targets ("ResNet strikes back", timm's `BinaryCrossEntropy`).
* `inputs`: the batch as the gradients see it: a policy (RandAugment / TrivialAugment) on the
  uint8 images, the dataset's preprocessing, random erasing, then mixup / CutMix of
  (images, targets). Each draws from its own stream of the step's augmentation key.
* `accumulated`: the gradients of `accumulation_steps` micro-batches (`lax.scan`), averaged.
* `averaging`: the EMA of the weights, after the optimiser's update (`ema.py`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from resnet_jax.data import augment
from resnet_jax.data import auto_augment
from resnet_jax.train import ema as ema_lib

Configs = Sequence[ml_collections.ConfigDict]
Preprocess = Callable[[jax.Array, Optional[jax.Array], bool], jax.Array]
# (logits [B, C], targets: labels [B] or probabilities [B, C]) -> per-example loss [B]
Loss = Callable[[jax.Array, jax.Array], jax.Array]
# (batch, augmentation key, run index) -> (images, targets)
Inputs = Callable[[Dict[str, jax.Array], jax.Array, Any], Tuple[jax.Array, jax.Array]]
# (images, targets, augmentation key, run index) -> (images, targets)
Part = Callable[[jax.Array, jax.Array, jax.Array, Any], Tuple[jax.Array, jax.Array]]

# Each augmentation draws from fold_in(augmentation key, its stream): turning one on or off
# leaves the others' draws (and the dataset's crop and flip, from the key itself) unchanged.
POLICY_STREAM, ERASING_STREAM, MIXING_STREAM = 1, 2, 3


def per_run(configs: Configs, value: Callable[[ml_collections.ConfigDict], Any], run: Any) -> Any:
  """One value per run: the Python value when every run shares it (a run alone), else run
  `run`'s entry of a table (packed runs that differ only in values)."""
  values = [value(c) for c in configs]
  if all(v == values[0] for v in values):
    return values[0]
  return jnp.asarray(values, jnp.float32)[run]


# -- losses ------------------------------------------------------------------------------
def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
  """Per-example softmax cross-entropy, optionally with label smoothing (Szegedy et al. 2016)."""
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  targets = jax.nn.one_hot(labels, num_classes, dtype=dtype)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(dtype), targets)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy with probability targets [B, C] (timm's `SoftTargetCrossEntropy`)."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example mean over the classes of the sigmoid cross-entropy with targets [B, C]; its batch
  mean is `torch.nn.BCEWithLogitsLoss()` (the mean over every logit), as timm's
  `BinaryCrossEntropy` ("ResNet strikes back": each class a 1-vs-all problem)."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets), axis=-1)


def mixes(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` mixes its batches (mixup or CutMix on): the targets are then probabilities."""
  a = config.get("augmentation", {})
  return bool(a.get("mixup_alpha", 0.0) or a.get("cutmix_alpha", 0.0))


def loss(config: ml_collections.ConfigDict, num_classes: int) -> Loss:
  """The loss of `config.loss` on the targets its `inputs` give (labels, or probabilities
  already smoothed and mixed when the batch is mixed)."""
  smoothing = float(config.label_smoothing)
  name = config.get("loss", "cross_entropy")
  if name == "binary_cross_entropy":
    if mixes(config):
      return binary_cross_entropy
    return lambda logits, labels: binary_cross_entropy(
        logits, augment.smoothed_one_hot(labels, num_classes, smoothing))
  if mixes(config):
    return soft_cross_entropy
  return lambda logits, labels: cross_entropy(logits, labels, num_classes, smoothing)


# -- inputs ------------------------------------------------------------------------------
def _policy(config: ml_collections.ConfigDict) -> Optional[Part]:
  """RandAugment / TrivialAugment on the uint8 batch, before the dataset's preprocessing (for
  CIFAR that is before the pad-crop-flip, which TrivialAugment's code does first)."""
  a = config.augmentation
  if a.policy == "none":
    return None
  if a.policy == "trivialaugment":
    return lambda images, targets, rng, run: (auto_augment.trivial_augment(
        images, jax.random.fold_in(rng, POLICY_STREAM)), targets)
  return lambda images, targets, rng, run: (auto_augment.rand_augment(
      images, jax.random.fold_in(rng, POLICY_STREAM), int(a.num_ops), float(a.magnitude),
      float(a.magnitude_std)), targets)


def _erasing(configs: Configs) -> Optional[Part]:
  """Random erasing of the normalised images, each run with its own probability."""
  if not configs[0].augmentation.random_erasing:
    return None

  def part(images, targets, rng, run):
    probability = per_run(configs, lambda c: float(c.augmentation.random_erasing), run)
    return augment.random_erasing(images, jax.random.fold_in(rng, ERASING_STREAM), probability), targets
  return part


def _mixing(configs: Configs, num_classes: int) -> Optional[Part]:
  """mixup / CutMix of the batch and of its smoothed one-hot targets (timm's `Mixup`)."""
  config = configs[0]
  if not mixes(config):
    return None
  a = config.augmentation

  def part(images, labels, rng, run):
    value = lambda name: per_run(configs, lambda c: float(c.augmentation[name]), run)
    targets = augment.smoothed_one_hot(labels, num_classes, per_run(configs, lambda c: float(c.label_smoothing), run))
    return augment.mix_batch(images, targets, jax.random.fold_in(rng, MIXING_STREAM),
                             mixup_alpha=value("mixup_alpha"), cutmix_alpha=value("cutmix_alpha"),
                             mix_prob=value("mix_prob"), switch_prob=value("switch_prob"),
                             use_mixup=bool(a.mixup_alpha), use_cutmix=bool(a.cutmix_alpha))
  return part


def inputs(configs: Configs, preprocess: Preprocess, num_classes: int) -> Inputs:
  """`(batch, key, run) -> (images, targets)`: the dataset's preprocessing with the key, and the
  recipes' augmentations its config turns on around it (module docstring)."""
  before = [p for p in (_policy(configs[0]),) if p is not None]
  after = [p for p in (_erasing(configs), _mixing(configs, num_classes)) if p is not None]
  if not before and not after:
    return lambda batch, rng, run: (preprocess(batch["image"], rng, True), batch["label"])

  def composed(batch, rng, run):
    images, targets = batch["image"], batch["label"]
    for part in before:
      images, targets = part(images, targets, rng, run)
    images = preprocess(images, rng, True)
    for part in after:
      images, targets = part(images, targets, rng, run)
    return images, targets
  return composed


# -- gradients and after the update ---------------------------------------------------------
def accumulated(loss_and_grads: Callable, k: int) -> Callable:
  """`loss_and_grads` over `k` micro-batches (rows i, i+k, i+2k, … form micro-batch i, so each
  is spread over every device), scanned: the mean loss, error and gradient; the BatchNorm
  statistics updated by each micro-batch in turn, as PyTorch's accumulation does."""
  if k == 1:
    return loss_and_grads

  def fn(params, batch_stats, images, targets, labels, dropout_rng, axis_name=None):
    micro = lambda x: x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)

    def one(carry, xs):
      grads, stats, loss_sum, error_sum = carry
      im, tg, lb, i = xs
      g, stats, loss_i, error_i = loss_and_grads(params, stats, im, tg, lb, jax.random.fold_in(dropout_rng, i),
                                                 axis_name)
      return (jax.tree.map(jnp.add, grads, g), stats, loss_sum + loss_i, error_sum + error_i), None
    zeros = (jax.tree.map(jnp.zeros_like, params), batch_stats, jnp.zeros((), jnp.float32),
             jnp.zeros((), jnp.float32))
    (grads, stats, loss_sum, error_sum), _ = jax.lax.scan(
        one, zeros, (micro(images), micro(targets), micro(labels), jnp.arange(k)))
    return jax.tree.map(lambda g: g / k, grads), stats, loss_sum / k, error_sum / k
  return fn


def averaging(configs: Configs) -> Optional[Callable]:
  """`(state, run) -> state` with the EMA updated after the optimiser step; None when off."""
  if not ema_lib.enabled(configs[0]):
    return None

  def part(state, run):
    value = lambda name: per_run(configs, lambda c: float(c.ema[name]), run)
    decay = ema_lib.decay_at(state.step - 1, value("decay"), value("warmup"), value("warmup_gamma"),
                             value("warmup_power"))
    return state.replace(ema=ema_lib.update(state.ema, state.params, state.batch_stats, decay))
  return part
