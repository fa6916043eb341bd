"""The jit-compiled train step over the 1-D data mesh (evaluation: `evaluation.py`).

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

import dataclasses
import warnings
from typing import Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, PartitionSpec as P

from resnet_jax.runtime import cpu_compile, cpu_conv
from resnet_jax.train import mesh as mesh_lib
from resnet_jax.train import packing
from resnet_jax.train.state import TrainState

Batch = Dict[str, jax.Array]
Metrics = Dict[str, jax.Array]
Preprocess = Callable[[jax.Array, Optional[jax.Array], bool], jax.Array]


def zero_train_metrics() -> Metrics:
  """Sums over a logging window; `first_nonfinite_step` is -1 while all losses are finite."""
  return {"loss": jnp.zeros((), jnp.float32), "error": jnp.zeros((), jnp.float32),
          "steps": jnp.zeros((), jnp.int32),
          "first_nonfinite_step": jnp.full((), -1, jnp.int32)}


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


@dataclasses.dataclass(frozen=True)
class StepExtras:
  """What the engine's step does beyond a minimal train step, each switchable for
  `resnet-jax bench --breakdown` (which times the step without each): training always
  runs with both on."""
  nonfinite_guard: bool = True   # record the first step whose loss or gradient is NaN/Inf
  metrics: bool = True           # sum the loss and the training error for the log line


def _optimizer_update(txs: Sequence[optax.GradientTransformation]) -> Callable:
  """`update(grads, opt_state, params, run)` with run `run`'s own optimiser.

  Runs whose optimisers differ only in values (learning rate, schedule, weight decay) share a
  program: `lax.switch` picks each run's update (under `vmap`, every branch is computed and
  each run keeps its own, so each run's arithmetic is its unpacked run's).
  """
  if all(t is txs[0] for t in txs):
    return lambda grads, opt_state, params, run: txs[0].update(grads, opt_state, params)
  branches = [lambda g, s, p, t=t: t.update(g, s, p) for t in txs]
  return lambda grads, opt_state, params, run: jax.lax.switch(run, branches, grads, opt_state, params)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation | Sequence[optax.GradientTransformation],
                    config: ml_collections.ConfigDict, mesh: Mesh, preprocess: Preprocess,
                    num_classes: int, steps_per_call: int = 1, extras: StepExtras = StepExtras(),
                    runs: Optional[int] = None, run_mapping: Optional[str] = None):
  """Returns jitted `(state, metrics, batch) -> (state, metrics)`; both are donated.

  With `steps_per_call` K > 1 every leaf of `batch` has a leading axis of K.

  Packed runs (`runs` R, `train/packing.py`): every leaf of the state, the metrics and the
  batch has a leading axis of R (after the K axis of a batch), one run per index, all
  trained by one program (`packing.over_runs`: on an accelerator `jax.vmap`, the same
  kernels doing R times the work; on a CPU one run after another, `run_mapping` says
  otherwise). `tx` may then be one optimiser per run (the same structure, other values).
  """
  mode = config.bn.mode
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
      if extras.metrics:
        errors = (jnp.argmax(logits, -1) != labels).astype(jnp.float32).mean()
      else:
        errors = jnp.zeros((), jnp.float32)
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

  # (An Optax transformation is itself a tuple: test for it, not for a sequence.)
  txs = [tx] * (runs or 1) if isinstance(tx, optax.GradientTransformation) else list(tx)
  if len(txs) != (runs or 1):
    raise ValueError(f"{len(txs)} optimisers for {runs or 1} runs")
  optimizer_update = _optimizer_update(txs)

  def one_step(state: TrainState, metrics: Metrics, batch: Batch, run: jax.Array) -> Tuple[TrainState, Metrics]:
    step_rng = jax.random.fold_in(state.rng, state.step)
    augment_rng, dropout_rng = jax.random.split(step_rng)
    images = preprocess(batch["image"], augment_rng, True)
    grads, new_stats, loss, error = loss_and_grads_fn(
        state.params, state.batch_stats, images, batch["label"], dropout_rng)
    updates, opt_state = optimizer_update(grads, state.opt_state, state.params, run)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "steps": metrics["steps"] + 1}
    if extras.metrics:
      metrics.update(loss=metrics["loss"] + loss, error=metrics["error"] + error)
    if extras.nonfinite_guard:
      # The gradient too: a ReLU can turn NaN activations into a finite loss.
      finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
      metrics["first_nonfinite_step"] = jnp.where((metrics["first_nonfinite_step"] < 0) & ~finite,
                                                  state.step, metrics["first_nonfinite_step"])
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                              opt_state=opt_state)
    return new_state, metrics

  if runs is None:
    dispatch_step = lambda state, metrics, batch: one_step(state, metrics, batch, 0)
  else:
    run_index = jnp.arange(runs)
    per_run = packing.over_runs(one_step, run_mapping or packing.default_mapping(platform), (0, 0, 0, 0))
    dispatch_step = lambda state, metrics, batch: per_run(state, metrics, batch, run_index)
  if steps_per_call == 1:
    step_fn = dispatch_step
  else:
    def step_fn(state, metrics, batches):
      (state, metrics), _ = jax.lax.scan(lambda carry, b: (dispatch_step(*carry, b), None),
                                         (state, metrics), batches)
      return state, metrics
  return jax.jit(step_fn, donate_argnums=(0, 1), out_shardings=mesh_lib.replicated(mesh),
                 compiler_options=cpu_compile.train_step_options(platform) or None)
