"""Evaluation: the eval step, every example of a split counted once on any device and host
count, and when the training loop evaluates.

The eval step adds mask-weighted sums (the last batch is padded and masked, so nothing is
dropped) of the loss, errors and top-5 errors on the devices; `evaluate_params` runs it
over a whole split and turns the sums into percentages. `Evaluations` schedules the
evaluations of a training group: dispatched without waiting (the devices go on training),
read at the next log line. Evaluating a trained workdir is `load.evaluate`, beside
`load_network`.

With `data.ten_crop` the eval batches are larger center squares and the step also scores
the papers' 10-crop testing (He et al. 2015, Table 3): the mean of the softmax over the
10 views (`augment.ten_crop`), reported as `ten_crop_error` / `ten_crop_top5_error` /
`ten_crop_loss`; `error` stays the single center crop.

A run that keeps a moving average of its weights (`ema.py`) has the EMA evaluated beside
them, on the same batches: its sums and results are prefixed `ema_`, and it gets its own
line and metrics record ("eval_ema").
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Dict, List, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from resnet_jax import errors
from resnet_jax.data import augment
from resnet_jax.data.pipeline import Pipeline
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.train import report
from resnet_jax.train import state as state_lib
from resnet_jax.train.step import Batch, Metrics, Preprocess, new_metrics

TEN_CROP_PREFIX = "ten_crop_"
EMA_PREFIX = "ema_"
EMA_RECORD = "eval_ema"   # the kind of the EMA's metrics records
EvalStep = Callable[[Any, Any, Metrics, Batch], Metrics]


def zero_eval_metrics(ten_crop: bool = False) -> Metrics:
  """Eval sums; with `ten_crop`, also those of the 10-crop prediction (prefixed `ten_crop_`)."""
  names = ("loss", "errors", "top5_errors")
  names += tuple(TEN_CROP_PREFIX + n for n in names) if ten_crop else ()
  return {n: jnp.zeros((), jnp.float32) for n in names + ("count",)}


def _classification_sums(log_probs: jax.Array, labels: jax.Array, mask: jax.Array,
                         prefix: str = "") -> Metrics:
  """Mask-weighted sums of the loss, errors and top-5 errors of log-probabilities [B, C]."""
  loss = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  top5 = jax.lax.top_k(log_probs, min(5, log_probs.shape[-1]))[1]
  in_top5 = jnp.any(top5 == labels[:, None], axis=-1)
  wrong = (jnp.argmax(log_probs, -1) != labels).astype(jnp.float32)
  return {prefix + "loss": jnp.sum(loss * mask), prefix + "errors": jnp.sum(wrong * mask),
          prefix + "top5_errors": jnp.sum((~in_top5).astype(jnp.float32) * mask)}


def _ten_crop_sums(model: nn.Module, variables, images: jax.Array, labels: jax.Array, mask: jax.Array,
                   crop_size: int) -> Metrics:
  """Sums of the center view and (prefixed `ten_crop_`) of the mean softmax of the 10 views."""
  views = augment.ten_crop(images, crop_size)                        # [10, B, crop, crop, C]
  b = images.shape[0]
  logits = model.apply(variables, views.reshape((10 * b,) + views.shape[2:]), train=False)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(10, b, -1)
  sums = _classification_sums(log_probs[augment.TEN_CROP_CENTER], labels, mask)
  mean_log_probs = jax.nn.logsumexp(log_probs, axis=0) - jnp.log(10.0)  # log of the mean softmax
  sums.update(_classification_sums(mean_log_probs, labels, mask, TEN_CROP_PREFIX))
  return sums


def eval_sums(model: nn.Module, preprocess: Preprocess, ten_crop_size: Optional[int] = None) -> EvalStep:
  """`(params, batch_stats, sums, batch) -> sums` of one run, not compiled (`make_eval_step`)."""
  def eval_step(params, batch_stats, sums: Metrics, batch: Batch) -> Metrics:
    images = preprocess(batch["image"], None, False)
    variables = {"params": params, "batch_stats": batch_stats}
    labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
    if ten_crop_size is None:
      logits = model.apply(variables, images, train=False).astype(jnp.float32)
      new = _classification_sums(jax.nn.log_softmax(logits), labels, mask)
    else:
      new = _ten_crop_sums(model, variables, images, labels, mask, ten_crop_size)
    return {**{k: sums[k] + v for k, v in new.items()}, "count": sums["count"] + jnp.sum(mask)}
  return eval_step


def compiled(eval_step: EvalStep, mesh: Mesh) -> EvalStep:
  """`jax.jit` of an eval step: sums donated, replicated."""
  return jax.jit(eval_step, donate_argnums=(2,), out_shardings=mesh_lib.replicated(mesh))


def make_eval_step(model: nn.Module, mesh: Mesh, preprocess: Preprocess, num_classes: Optional[int] = None,
                   ten_crop_size: Optional[int] = None) -> EvalStep:
  """Returns jitted `(params, batch_stats, sums, batch) -> sums`, mask-weighted (padded batches).

  With `ten_crop_size`, the batch holds larger center squares and the step adds the
  `ten_crop_*` sums (module docstring). `num_classes` is not needed (the logits give it);
  it is accepted, with a warning, for callers of the earlier signature.
  """
  if num_classes is not None:
    warnings.warn("make_eval_step(..., num_classes) is deprecated: the logits give the classes",
                  DeprecationWarning, stacklevel=2)
  return compiled(eval_sums(model, preprocess, ten_crop_size), mesh)


def ten_crop_size(pipe: Pipeline) -> Optional[int]:
  """The crop of the pipeline's 10-crop eval batches (`data.ten_crop`), else None."""
  return pipe.image_shape[0] if pipe.config.get("ten_crop", False) else None


def pipeline_eval_step(model: nn.Module, mesh: Mesh, pipe: Pipeline) -> EvalStep:
  """The eval step for `pipe`'s batches (10-crop evaluation when `data.ten_crop` is set)."""
  return make_eval_step(model, mesh, pipe.preprocess, ten_crop_size=ten_crop_size(pipe))


def zero_sums(pipe: Pipeline, mesh: Mesh) -> Metrics:
  """Zeroed eval sums for `pipe`'s batches, on the devices."""
  return new_metrics(functools.partial(zero_eval_metrics, ten_crop=ten_crop_size(pipe) is not None), mesh)


def weights_to_evaluate(state: Any) -> Dict[str, tuple]:
  """(params, batch_stats) to evaluate by result prefix: the weights under "", and the EMA
  under `EMA_PREFIX` when the run keeps one."""
  out = {"": (state.params, state.batch_stats)}
  ema = state_lib.ema_of(state)
  if ema is not None:
    out[EMA_PREFIX] = (ema["params"], ema["batch_stats"])
  return out


def merged(sums_by_prefix: Dict[str, Metrics]) -> Metrics:
  """One dict of sums: each weight set's under its prefix (one count: the same batches)."""
  out = dict(sums_by_prefix[""])
  for prefix, sums in sums_by_prefix.items():
    out.update({prefix + k: v for k, v in sums.items() if prefix and k != "count"})
  return out


def finish_evaluation(sums: Metrics) -> Dict[str, float]:
  """Error, top-5 error (percent), mean loss and example count from the eval sums (and those of
  every prefix present: 10-crop, EMA)."""
  sums = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), sums)
  count = float(sums["count"])
  if count == 0:
    raise errors.InputError("the eval split is empty")
  out = {}
  prefixes = [a + b for a in ("", EMA_PREFIX) for b in ("", TEN_CROP_PREFIX)]
  for prefix in (p for p in prefixes if f"{p}errors" in sums):
    out.update({f"{prefix}error": 100.0 * float(sums[f"{prefix}errors"]) / count,
                f"{prefix}top5_error": 100.0 * float(sums[f"{prefix}top5_errors"]) / count,
                f"{prefix}loss": float(sums[f"{prefix}loss"]) / count})
  return {**out, "num_examples": int(count)}


def of_weights(result: Dict[str, float], prefix: str) -> Dict[str, float]:
  """The results of one weight set (`prefix` "" or `EMA_PREFIX`), without its prefix."""
  own = {k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix)}
  if not prefix:
    own = {k: v for k, v in own.items() if not k.startswith(EMA_PREFIX)}
  return {**own, "num_examples": result["num_examples"]}


def evaluate_params(eval_step: EvalStep, params, batch_stats, pipe: Pipeline, mesh: Mesh) -> Dict[str, float]:
  """Error, top-5 error (percent), mean loss and example count over the whole eval split."""
  sums = zero_sums(pipe, mesh)
  for batch in pipe.eval_iterator():
    sums = eval_step(params, batch_stats, sums, batch)
  return finish_evaluation(sums)


class Evaluations:
  """A training group's evaluations: dispatched without waiting for the devices, recorded when read.

  `start` dispatches the eval steps of the current weights (the devices run them before the
  train steps dispatched after); `finish` reads the sums, which are ready by the next log
  line, and writes and prints each run's result. A checkpoint carries the evaluation of its
  own weights (`of_current`), which is what ranks it for `keep_best_checkpoints`.
  `on_nonfinite(group)` is called when a result is not finite (diverged weights), to stop the
  runs whose loss became NaN/Inf before their evaluation is recorded.
  """

  def __init__(self, group: Any, on_nonfinite: Callable[[Any], None]):
    self.group = group  # a `group.Group`
    self.on_nonfinite = on_nonfinite
    self.pending: Optional[tuple[int, List[Any], Callable[[], List[Metrics]]]] = None  # step, runs, read

  def start(self) -> None:
    self.finish()
    self.pending = (self.group.step, list(self.group.runs), self.group.start_evaluation())

  def finish(self) -> None:
    """Reads, writes and prints the pending evaluation of each run, if any."""
    if self.pending is None:
      return
    step, runs, read = self.pending
    self.pending = None
    for run, sums in zip(runs, read()):
      if run.error is not None:  # stopped (NaN) since the evaluation started
        continue
      result = finish_evaluation(sums)
      if not math.isfinite(result["loss"]):
        self.on_nonfinite(self.group)  # diverged weights: the NaN report, not their eval
        if run.error is not None:
          continue
      epoch = step / run.exp.steps_per_epoch
      for prefix, kind in (("", "eval"), (EMA_PREFIX, EMA_RECORD)):
        if prefix and f"{prefix}error" not in result:
          continue
        own = of_weights(result, prefix)
        run.session.writer.write(step, {**own, "epoch": epoch}, kind)
        run.session.writer.print(report.eval_line(step, epoch, own, run.exp.config.data.eval_split,
                                                  "eval" if not prefix else "eval (EMA)"))
      run.last_eval = result

  def of_current(self) -> None:
    """Makes each run's `last_eval` that of its current weights (dispatched now unless pending)."""
    if self.pending is None or self.pending[0] != self.group.step:
      self.start()
    self.finish()
