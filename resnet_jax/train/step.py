"""The jit-compiled train step over the 1-D data mesh, composed from small parts (evaluation:
`evaluation.py`).

A step is `compiled(k_steps(over runs(train_step(inputs, gradients, optimizer_update, averaging))))`:

* `inputs` (`parts.inputs`): the batch's images and targets after the dataset's preprocessing
  and the recipe's augmentations (RandAugment/TrivialAugment, random erasing, mixup/CutMix);

* `gradients`: loss, error and gradients for the BatchNorm mode of `config.bn.mode`, an
  experimental choice (STYLE.md):
  - "global": plain `jax.jit` over the sharded batch; XLA reduces the moments over the whole
    global batch (synchronised BN);
  - "per_device": the forward/backward pass runs under `jax.shard_map` over `DATA_AXIS`, so
    each device normalises its own shard, as the papers' multi-GPU training did (He et al.
    2015 §3.4: 256 images on 8 GPUs); gradients, loss and the new running statistics are
    then averaged over the axis;
  - "ghost": statistics over groups of `config.bn.ghost_batch_size` consecutive examples
    (Hoffer et al. 2017), independent of the device count (the model's norm does it).
  The loss is a part it receives (`parts.loss`), and with `accumulation_steps` > 1 it is the
  mean over micro-batches (`parts.accumulated`).
* `optimizer_update`: one Optax update with the run's own optimiser (`lax.switch` over the
  runs' optimisers when packed runs differ in values).
* `averaging` (`parts.averaging`): the moving average of the weights after the update.
* `train_step`: one step of one run: its randomness, inputs, gradients, update, averaging and
  on-device metric sums (`MetricSums`, fetched by the loop only every few steps).
* over runs (`packing.over_runs`): packed runs stacked on a leading axis, one program.
* `k_steps`: K steps per dispatch with `lax.scan`.
* `compiled`: `jax.jit` with donated state and metrics, and on CPU the compile options of
  `cpu_compile.train_step_options` (elementwise ops in YNNPACK, 1.4-2.6x faster).

The platform's choice of network (`model_for_platform`: on CPU the network differentiates
through `cpu_conv.conv_general_dilated`, whose gradient convolutions XLA:CPU runs with Eigen
inside the scan too; without it a scanned ResNet step was ~16x slower) is made where the
experiment is built (`build.experiment`); `make_train_step` makes it for its direct callers.
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
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.train import packing
from resnet_jax.train import parts
from resnet_jax.train.parts import cross_entropy  # noqa: F401  (re-exported)
from resnet_jax.train.state import TrainState

Batch = Dict[str, jax.Array]
Metrics = Dict[str, jax.Array]
Preprocess = Callable[[jax.Array, Optional[jax.Array], bool], jax.Array]
# (params, batch_stats, images, targets, labels, rng) -> (grads, new batch_stats, loss, error)
Gradients = Callable[..., Tuple]
# (grads, opt_state, params, run index) -> (updates, new opt_state)
OptimizerUpdate = Callable[..., Tuple]
# (state, metrics, batch, run index) -> (state, metrics)
OneStep = Callable[[TrainState, Metrics, Batch, jax.Array], Tuple[TrainState, Metrics]]


def zero_train_metrics() -> Metrics:
  """Sums over a logging window; `first_nonfinite_step` is -1 while all losses are finite."""
  return {"loss": jnp.zeros((), jnp.float32), "error": jnp.zeros((), jnp.float32),
          "steps": jnp.zeros((), jnp.int32),
          "first_nonfinite_step": jnp.full((), -1, jnp.int32)}


def new_metrics(zeros_fn: Callable[[], Metrics], mesh: Mesh) -> Metrics:
  """Zeroed sums as global arrays replicated over `mesh` (valid across processes)."""
  return jax.jit(zeros_fn, out_shardings=mesh_lib.replicated(mesh))()


@dataclasses.dataclass(frozen=True)
class StepExtras:
  """What the engine's step does beyond a minimal train step, each switchable for
  `resnet-jax bench --breakdown` (which times the step without each): training always
  runs with both on."""
  nonfinite_guard: bool = True   # record the first step whose loss or gradient is NaN/Inf
  metrics: bool = True           # sum the loss and the training error for the log line


def model_for_platform(model: nn.Module, platform: str, steps_per_call: int) -> nn.Module:
  """The network the train step differentiates on `platform` (module docstring); warns when
  K steps per dispatch on CPU cannot get canonical convolution gradients."""
  model, canonical = cpu_conv.for_platform(model, platform)
  if steps_per_call > 1 and not canonical:
    warnings.warn(
        f"steps_per_call={steps_per_call} on {platform}: the network's convolution "
        f"(conv={getattr(model, 'conv', None)!r}) is not a flax.linen.Conv constructor, so its "
        "gradient convolutions inside lax.scan run as XLA:CPU's naive loops (~16x slower than "
        "single steps for a ResNet); use steps_per_dispatch=1 on CPU", stacklevel=3)
  return model


def gradients(model: nn.Module, config: ml_collections.ConfigDict, mesh: Mesh, num_classes: int,
              extras: StepExtras = StepExtras(), loss: Optional[parts.Loss] = None) -> Gradients:
  """Loss, training error and gradients of one batch, for the BatchNorm mode (module docstring).

  `loss(logits, targets)`: per-example losses (default: `parts.loss(config)`); the error is
  counted against the labels (the un-mixed ones when the batch is mixed).
  """
  loss = parts.loss(config, num_classes) if loss is None else loss

  def loss_and_grads(params, batch_stats, images, targets, labels, dropout_rng, axis_name=None):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                    train=True, mutable=["batch_stats"],
                                    rngs={"dropout": dropout_rng})
      mean_loss = loss(logits, targets).mean()
      if axis_name is not None:
        # Mean over the whole batch inside the differentiated function: the gradient is
        # then the global-batch gradient, replicated on every device.
        mean_loss = jax.lax.pmean(mean_loss, axis_name)
      if extras.metrics:
        errors = (jnp.argmax(logits, -1) != labels).astype(jnp.float32).mean()
      else:
        errors = jnp.zeros((), jnp.float32)
      return mean_loss, (errors, updates["batch_stats"])
    (mean_loss, (error, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if axis_name is not None:
      error, new_stats = jax.lax.pmean((error, new_stats), axis_name)
    return grads, new_stats, mean_loss, error

  loss_and_grads = parts.accumulated(loss_and_grads, int(config.get("accumulation_steps", 1)))
  if config.bn.mode != "per_device":
    return loss_and_grads

  def per_device(params, batch_stats, images, targets, labels, dropout_rng):
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(mesh_lib.DATA_AXIS))
    return loss_and_grads(params, batch_stats, images, targets, labels, dropout_rng, mesh_lib.DATA_AXIS)
  data = P(mesh_lib.DATA_AXIS)
  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), data, data, data, P()), out_specs=P())


def optimizer_update(txs: Sequence[optax.GradientTransformation]) -> OptimizerUpdate:
  """`update(grads, opt_state, params, run)` with run `run`'s own optimiser.

  Runs whose optimisers differ only in values (learning rate, schedule, weight decay) share a
  program: `lax.switch` picks each run's update (under `vmap`, every branch is computed and
  each run keeps its own, so each run's arithmetic is its unpacked run's).
  """
  if all(t is txs[0] for t in txs):
    return lambda grads, opt_state, params, run: txs[0].update(grads, opt_state, params)
  branches = [lambda g, s, p, t=t: t.update(g, s, p) for t in txs]
  return lambda grads, opt_state, params, run: jax.lax.switch(run, branches, grads, opt_state, params)


def _record(metrics: Metrics, step: jax.Array, loss: jax.Array, error: jax.Array, grads,
            extras: StepExtras) -> Metrics:
  """The metric sums after one step."""
  metrics = {**metrics, "steps": metrics["steps"] + 1}
  if extras.metrics:
    metrics.update(loss=metrics["loss"] + loss, error=metrics["error"] + error)
  if extras.nonfinite_guard:
    # The gradient too: a ReLU can turn NaN activations into a finite loss.
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    metrics["first_nonfinite_step"] = jnp.where((metrics["first_nonfinite_step"] < 0) & ~finite,
                                                step, metrics["first_nonfinite_step"])
  return metrics


def train_step(grads_fn: Gradients, update_fn: OptimizerUpdate, inputs: parts.Inputs,
               extras: StepExtras = StepExtras(), averaging: Optional[Callable] = None) -> OneStep:
  """One step of one run: `(state, metrics, batch, run index) -> (state, metrics)`.

  The randomness of step t is `fold_in(state.rng, t)` (augmentation and dropout), so a
  resumed run draws the same numbers. `averaging(state, run)`: after the update (the EMA).
  """
  def one_step(state: TrainState, metrics: Metrics, batch: Batch, run: jax.Array) -> Tuple[TrainState, Metrics]:
    augment_rng, dropout_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    images, targets = inputs(batch, augment_rng, run)
    grads, new_stats, loss, error = grads_fn(state.params, state.batch_stats, images, targets, batch["label"],
                                             dropout_rng)
    updates, opt_state = update_fn(grads, state.opt_state, state.params, run)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=new_stats, opt_state=opt_state)
    if averaging is not None:
      new_state = averaging(new_state, run)
    return new_state, _record(metrics, state.step, loss, error, grads, extras)
  return one_step


def alone(step: OneStep) -> Callable:
  """`(state, metrics, batch) -> (state, metrics)` of a run trained alone."""
  return lambda state, metrics, batch: step(state, metrics, batch, 0)


def k_steps(step: Callable, k: int) -> Callable:
  """`step` run K times per dispatch (`lax.scan` over a leading K axis of the batch); K=1: `step`."""
  if k == 1:
    return step

  def scanned(state, metrics, batches):
    (state, metrics), _ = jax.lax.scan(lambda carry, b: (step(*carry, b), None), (state, metrics), batches)
    return state, metrics
  return scanned


def compiled(step: Callable, mesh: Mesh) -> Callable:
  """`jax.jit` of a step: state and metrics donated, replicated outputs, the platform's options."""
  platform = mesh.devices.flat[0].platform
  return jax.jit(step, donate_argnums=(0, 1), out_shardings=mesh_lib.replicated(mesh),
                 compiler_options=cpu_compile.train_step_options(platform) or None)


def _one_step(model, txs, configs, mesh, preprocess, num_classes, extras) -> OneStep:
  """The step of one run from the parts its config (or its group's configs, one per run) turns on."""
  config = configs[0]
  return train_step(gradients(model, config, mesh, num_classes, extras), optimizer_update(txs),
                    parts.inputs(configs, preprocess, num_classes), extras, parts.averaging(configs))


def build_train_step(model: nn.Module, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                     mesh: Mesh, preprocess: Preprocess, num_classes: int, steps_per_call: int = 1,
                     extras: StepExtras = StepExtras()):
  """Jitted `(state, metrics, batch) -> (state, metrics)` of one run, `model` as the platform's
  (`model_for_platform`). With `steps_per_call` K > 1 every leaf of `batch` has a leading K axis."""
  step = alone(_one_step(model, [tx], [config], mesh, preprocess, num_classes, extras))
  return compiled(k_steps(step, steps_per_call), mesh)


def build_packed_train_step(model: nn.Module, txs: Sequence[optax.GradientTransformation],
                            config: ml_collections.ConfigDict, mesh: Mesh, preprocess: Preprocess,
                            num_classes: int, steps_per_call: int = 1, extras: StepExtras = StepExtras(),
                            run_configs: Optional[Sequence[ml_collections.ConfigDict]] = None):
  """Jitted step of R packed runs (`train/packing.py`), one optimiser per run (the same
  structure, other values): every leaf of the state, the metrics and the batch has a leading
  axis of R (after the K axis of a batch), one run per index, all trained by one program.
  `run_configs`: each run's config, for the values of its parts (EMA decay, mixup α, ...);
  default `config` for every run."""
  configs = list(run_configs) if run_configs is not None else [config] * len(txs)
  step = packing.over_runs(_one_step(model, list(txs), configs, mesh, preprocess, num_classes, extras),
                           (0, 0, 0, 0))
  run_index = jnp.arange(len(txs))
  return compiled(k_steps(lambda state, metrics, batch: step(state, metrics, batch, run_index), steps_per_call),
                  mesh)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                    mesh: Mesh, preprocess: Preprocess, num_classes: int, steps_per_call: int = 1,
                    extras: StepExtras = StepExtras()):
  """Returns jitted `(state, metrics, batch) -> (state, metrics)` of one run; both are donated.

  `build_train_step` with the platform's network (`model_for_platform`), for callers that
  hold a network rather than a built experiment.
  """
  platform = mesh.devices.flat[0].platform
  return build_train_step(model_for_platform(model, platform, steps_per_call), tx, config, mesh, preprocess,
                          num_classes, steps_per_call, extras)
