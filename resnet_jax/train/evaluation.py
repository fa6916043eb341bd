"""Evaluation: every example of a split counted once, on any device and host count.

The eval step adds mask-weighted sums (the last batch is padded and masked, so nothing is
dropped) of the loss, errors and top-5 errors on the devices; `evaluate_params` runs it
over a whole split and turns the sums into percentages; `evaluate` does that for a
checkpoint of a training workdir.

With `data.ten_crop` the eval batches are larger center squares and the step also scores
the papers' 10-crop testing (He et al. 2015, Table 3): the mean of the softmax over the
10 views (`augment.ten_crop`), reported as `ten_crop_error` / `ten_crop_top5_error` /
`ten_crop_loss`; `error` stays the single center crop.
"""
from __future__ import annotations

import functools
import logging
import pathlib
import warnings
from typing import Any, Callable, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from resnet_jax.data import augment
from resnet_jax.data.pipeline import Pipeline
from resnet_jax.runtime import object_store
from resnet_jax.train import build
from resnet_jax.train import config as config_lib
from resnet_jax.train import load as load_lib
from resnet_jax.train import mesh as mesh_lib
from resnet_jax.train import packing
from resnet_jax.train import workdir_io
from resnet_jax.train.step import Batch, Metrics, Preprocess, new_metrics

TEN_CROP_PREFIX = "ten_crop_"
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


def make_eval_step(model: nn.Module, mesh: Mesh, preprocess: Preprocess, num_classes: Optional[int] = None,
                   ten_crop_size: Optional[int] = None, runs: Optional[int] = None,
                   run_mapping: Optional[str] = None) -> EvalStep:
  """Returns jitted `(params, batch_stats, sums, batch) -> sums`, mask-weighted (padded batches).

  With `ten_crop_size`, the batch holds larger center squares and the step adds the
  `ten_crop_*` sums (module docstring). `num_classes` is not needed (the logits give it);
  it is accepted, with a warning, for callers of the earlier signature. Packed runs (`runs`
  R): params, statistics and sums have a leading axis of R; every run sees the same batch.
  """
  if num_classes is not None:
    warnings.warn("make_eval_step(..., num_classes) is deprecated: the logits give the classes",
                  DeprecationWarning, stacklevel=2)

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
  if runs is not None:
    mapping = run_mapping or packing.default_mapping(mesh.devices.flat[0].platform)
    eval_step = packing.over_runs(eval_step, mapping, (0, 0, 0, None))
  return jax.jit(eval_step, donate_argnums=(2,), out_shardings=mesh_lib.replicated(mesh))


def uses_ten_crop(pipe: Pipeline) -> bool:
  """Whether the pipeline's eval batches are 10-crop squares (`data.ten_crop`)."""
  return bool(pipe.config.get("ten_crop", False))


def pipeline_eval_step(model: nn.Module, mesh: Mesh, pipe: Pipeline, runs: Optional[int] = None) -> EvalStep:
  """The eval step for `pipe`'s batches (10-crop evaluation when `data.ten_crop` is set)."""
  return make_eval_step(model, mesh, pipe.preprocess,
                        ten_crop_size=pipe.image_shape[0] if uses_ten_crop(pipe) else None, runs=runs)


def start_evaluation(eval_step: EvalStep, params, batch_stats, pipe: Pipeline, mesh: Mesh,
                     runs: Optional[int] = None) -> Metrics:
  """Dispatches the eval step over the whole split and returns the sums still on the devices.

  Nothing waits for the devices here: the training loop dispatches its next steps while
  they evaluate, and reads the result (`finish_evaluation`) when it is ready. With `runs`,
  the packed runs' sums, [R] each.
  """
  zeros = functools.partial(zero_eval_metrics, ten_crop=uses_ten_crop(pipe))
  if runs is not None:
    zeros = functools.partial(lambda z: packing.stack([z()] * runs), zeros)
  sums = new_metrics(zeros, mesh)
  for batch in pipe.eval_iterator():
    sums = eval_step(params, batch_stats, sums, batch)
  return sums


def finish_evaluation(sums: Metrics) -> Dict[str, float]:
  """Error, top-5 error (percent), mean loss and example count from the eval sums."""
  sums = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), sums)
  count = float(sums["count"])
  if count == 0:
    raise ValueError("the eval split is empty")
  out = {}
  for prefix in ("", TEN_CROP_PREFIX) if f"{TEN_CROP_PREFIX}errors" in sums else ("",):
    out.update({f"{prefix}error": 100.0 * float(sums[f"{prefix}errors"]) / count,
                f"{prefix}top5_error": 100.0 * float(sums[f"{prefix}top5_errors"]) / count,
                f"{prefix}loss": float(sums[f"{prefix}loss"]) / count})
  return {**out, "num_examples": int(count)}


def evaluate_params(eval_step: EvalStep, params, batch_stats, pipe: Pipeline, mesh: Mesh) -> Dict[str, float]:
  """Error, top-5 error (percent), mean loss and example count over the whole eval split."""
  return finish_evaluation(start_evaluation(eval_step, params, batch_stats, pipe, mesh))


def evaluate(workdir: str | pathlib.Path, step: Optional[int | str] = None, split: Optional[str] = None,
             mesh: Optional[Mesh] = None, log: Callable[[str], None] = logging.warning,
             data_dir: Optional[str | pathlib.Path] = None) -> Dict[str, Any]:
  """Evaluates a checkpoint of `workdir` (the latest by default, or `"best"`) on every
  example of a split.

  The split is the run's `data.eval_split` unless `split` is given; the dataset is read
  from `data_dir`, else where the run read it if that folder exists here, else
  $TFDS_DATA_DIR (`config.with_local_data_dir`).
  """
  object_store.check_reachable(workdir)
  workdir = workdir_io.as_path(workdir)
  config = config_lib.with_local_data_dir(config_lib.load_config(workdir), data_dir)
  if split:
    config.data.eval_split = split
  mesh = mesh_lib.create_mesh() if mesh is None else mesh
  try:
    pipe = build.pipeline(config, mesh)
  except FileNotFoundError as e:  # a run's data dir is often a path of the machine that trained it
    raise FileNotFoundError(f"{e}; or read a prepared copy elsewhere: eval --data-dir DIR (evaluate(..., "
                            "data_dir=DIR)) or $TFDS_DATA_DIR") from None
  model, variables, step = load_lib.restore_variables(workdir, step, config, log)
  if model.num_classes != pipe.num_classes:
    raise ValueError(f"the checkpoint has {model.num_classes} classes but data.name="
                     f"{config.data.name!r} has {pipe.num_classes}")
  params, batch_stats = jax.device_put((variables["params"], variables.get("batch_stats", {})),
                                       mesh_lib.replicated(mesh))
  result = evaluate_params(pipeline_eval_step(model, mesh, pipe), params, batch_stats, pipe, mesh)
  return {"step": int(step), **result, "model": config.model.name, "split": config.data.eval_split}
