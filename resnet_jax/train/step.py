"""Jit-compiled train and eval steps over the 1-D data mesh.

BatchNorm statistics are an experimental choice (STYLE.md), decided here from
`config.bn.mode`:

* "global": plain `jax.jit` over the sharded batch; XLA reduces the moments over
  the whole global batch (synchronised BN).
* "per_device": the forward/backward pass runs under `jax.shard_map` over
  `DATA_AXIS`, so each device normalises its own shard, as the papers' multi-GPU
  training did (He et al. 2015 §3.4: 256 images on 8 GPUs); gradients, loss and
  the new running statistics are then averaged over the axis.
* "ghost": statistics over groups of `config.bn.ghost_batch_size` consecutive
  examples (Hoffer et al. 2017), independent of the device count.

Metrics are accumulated on device (`MetricSums`) and only fetched by the loop
every few steps; `make_train_step(..., steps_per_call=K)` runs K steps per
dispatch with `lax.scan`. On CPU the step differentiates the network through
`cpu_conv.conv_general_dilated`, whose gradient convolutions XLA:CPU runs with Eigen
inside the scan too (without it a scanned ResNet step was ~16x slower; see `cpu_conv`), and
compiles with `cpu_compile.train_step_options` (elementwise ops in YNNPACK, 1.4-2.6x faster).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, PartitionSpec as P

from resnet_jax.train import cpu_compile, cpu_conv
from resnet_jax.train import mesh as mesh_lib
from resnet_jax.train.config import BN_MODES
from resnet_jax.train.state import TrainState

Batch = Dict[str, jax.Array]
Metrics = Dict[str, jax.Array]
Preprocess = Callable[[jax.Array, Optional[jax.Array], bool], jax.Array]


def zero_train_metrics() -> Metrics:
  """Sums over a logging window; `first_nonfinite_step` is -1 while all losses are finite."""
  return {"loss": jnp.zeros((), jnp.float32), "error": jnp.zeros((), jnp.float32),
          "steps": jnp.zeros((), jnp.int32),
          "first_nonfinite_step": jnp.full((), -1, jnp.int32)}


TEN_CROP_PREFIX = "ten_crop_"


def zero_eval_metrics(ten_crop: bool = False) -> Metrics:
  """Eval sums; with `ten_crop`, also those of the 10-crop prediction (prefixed `ten_crop_`)."""
  names = ("loss", "errors", "top5_errors")
  names += tuple(TEN_CROP_PREFIX + n for n in names) if ten_crop else ()
  return {n: jnp.zeros((), jnp.float32) for n in names + ("count",)}


def new_metrics(zeros_fn: Callable[[], Metrics], mesh: Mesh) -> Metrics:
  """Zeroed sums as global arrays replicated over `mesh` (valid across processes)."""
  return jax.jit(zeros_fn, out_shardings=mesh_lib.replicated(mesh))()


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float) -> jax.Array:
  """Per-example softmax cross-entropy, optionally with label smoothing (Szegedy et al. 2016)."""
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  targets = jax.nn.one_hot(labels, num_classes, dtype=dtype)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(dtype), targets)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, mesh: Mesh, preprocess: Preprocess,
                    num_classes: int, steps_per_call: int = 1):
  """Returns jitted `(state, metrics, batch) -> (state, metrics)`; both are donated.

  With `steps_per_call` K > 1 every leaf of `batch` has a leading axis of K.
  """
  mode = config.bn.mode
  if mode not in BN_MODES:
    raise ValueError(f"bn.mode={mode!r} is not one of {BN_MODES}")
  platform = mesh.devices.flat[0].platform
  model, canonical = cpu_conv.for_platform(model, platform)
  if steps_per_call > 1 and not canonical:
    warnings.warn(
        f"steps_per_call={steps_per_call} on {platform}: the network's convolution "
        f"(conv={getattr(model, 'conv', None)!r}) is not a flax.linen.Conv constructor, so its "
        "gradient convolutions inside lax.scan run as XLA:CPU's naive loops (~16x slower than "
        "single steps for a ResNet); use steps_per_dispatch=1 on CPU", stacklevel=2)
  label_smoothing = float(config.label_smoothing)

  def loss_and_grads(params, batch_stats, images, labels, dropout_rng, axis_name=None):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                    train=True, mutable=["batch_stats"],
                                    rngs={"dropout": dropout_rng})
      loss = cross_entropy(logits, labels, num_classes, label_smoothing).mean()
      if axis_name is not None:
        # Mean over the whole batch inside the differentiated function: the gradient is
        # then the global-batch gradient, replicated on every device.
        loss = jax.lax.pmean(loss, axis_name)
      errors = (jnp.argmax(logits, -1) != labels).astype(jnp.float32).mean()
      return loss, (errors, updates["batch_stats"])
    (loss, (error, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if axis_name is not None:
      error, new_stats = jax.lax.pmean((error, new_stats), axis_name)
    return grads, new_stats, loss, error

  if mode == "per_device":
    def per_device(params, batch_stats, images, labels, dropout_rng):
      dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(mesh_lib.DATA_AXIS))
      return loss_and_grads(params, batch_stats, images, labels, dropout_rng, mesh_lib.DATA_AXIS)
    loss_and_grads_fn = jax.shard_map(
        per_device, mesh=mesh,
        in_specs=(P(), P(), P(mesh_lib.DATA_AXIS), P(mesh_lib.DATA_AXIS), P()),
        out_specs=P())
  else:
    loss_and_grads_fn = loss_and_grads

  def one_step(state: TrainState, metrics: Metrics, batch: Batch) -> Tuple[TrainState, Metrics]:
    step_rng = jax.random.fold_in(state.rng, state.step)
    augment_rng, dropout_rng = jax.random.split(step_rng)
    images = preprocess(batch["image"], augment_rng, True)
    grads, new_stats, loss, error = loss_and_grads_fn(
        state.params, state.batch_stats, images, batch["label"], dropout_rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The gradient too: a ReLU can turn NaN activations into a finite loss.
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    metrics = {
        "loss": metrics["loss"] + loss, "error": metrics["error"] + error,
        "steps": metrics["steps"] + 1,
        "first_nonfinite_step": jnp.where((metrics["first_nonfinite_step"] < 0) & ~finite,
                                          state.step, metrics["first_nonfinite_step"]),
    }
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                              opt_state=opt_state)
    return new_state, metrics

  if steps_per_call == 1:
    step_fn = one_step
  else:
    def step_fn(state, metrics, batches):
      (state, metrics), _ = jax.lax.scan(lambda carry, b: (one_step(*carry, b), None),
                                         (state, metrics), batches)
      return state, metrics
  return jax.jit(step_fn, donate_argnums=(0, 1), out_shardings=mesh_lib.replicated(mesh),
                 compiler_options=cpu_compile.train_step_options(platform) or None)


def _classification_sums(log_probs: jax.Array, labels: jax.Array, mask: jax.Array,
                         prefix: str = "") -> Metrics:
  """Mask-weighted sums of the loss, errors and top-5 errors of log-probabilities [B, C]."""
  loss = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  top5 = jax.lax.top_k(log_probs, min(5, log_probs.shape[-1]))[1]
  in_top5 = jnp.any(top5 == labels[:, None], axis=-1)
  wrong = (jnp.argmax(log_probs, -1) != labels).astype(jnp.float32)
  return {prefix + "loss": jnp.sum(loss * mask), prefix + "errors": jnp.sum(wrong * mask),
          prefix + "top5_errors": jnp.sum((~in_top5).astype(jnp.float32) * mask)}


def make_eval_step(model: nn.Module, mesh: Mesh, preprocess: Preprocess, num_classes: int,
                   ten_crop_size: Optional[int] = None):
  """Returns jitted `(params, batch_stats, sums, batch) -> sums`, mask-weighted (padded batches).

  With `ten_crop_size`, the batch holds larger center squares (`data.ten_crop`): the
  step evaluates the 10 views of `augment.ten_crop` and adds the error of their averaged
  softmax (the papers' "10-crop testing", He et al. 2015 Table 3) as `ten_crop_*` sums;
  the plain sums are those of the center view, the standard single crop.
  """
  del num_classes  # the logits say it
  from resnet_jax.data import augment  # pylint: disable=g-import-not-at-top

  def eval_step(params, batch_stats, sums: Metrics, batch: Batch) -> Metrics:
    images = preprocess(batch["image"], None, False)
    variables = {"params": params, "batch_stats": batch_stats}
    labels = batch["label"]
    mask = batch["mask"].astype(jnp.float32)
    if ten_crop_size is None:
      logits = model.apply(variables, images, train=False).astype(jnp.float32)
      new = _classification_sums(jax.nn.log_softmax(logits), labels, mask)
    else:
      views = augment.ten_crop(images, ten_crop_size)                  # [10, B, crop, crop, C]
      b = images.shape[0]
      logits = model.apply(variables, views.reshape((10 * b,) + views.shape[2:]), train=False)
      log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(10, b, -1)
      new = _classification_sums(log_probs[augment.TEN_CROP_CENTER], labels, mask)
      mean_log_probs = jax.nn.logsumexp(log_probs, axis=0) - jnp.log(10.0)  # log of the mean softmax
      new.update(_classification_sums(mean_log_probs, labels, mask, TEN_CROP_PREFIX))
    return {**{k: sums[k] + v for k, v in new.items()}, "count": sums["count"] + jnp.sum(mask)}
  return jax.jit(eval_step, donate_argnums=(2,), out_shardings=mesh_lib.replicated(mesh))
