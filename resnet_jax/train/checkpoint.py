"""Orbax checkpoints: train state, metric sums, data-iterator position and a fingerprint.

Each checkpoint step holds three items:

* "state": the `TrainState` (params, BN statistics, optimiser state, step, RNG)
  and the on-device metric sums of the current logging window (so a resumed run
  logs the same numbers as an uninterrupted one);
* "data": the data iterator's `get_state()` (exact resume of the batch stream);
* "meta": a fingerprint of the model (config.model, classes, input shape,
  parameter and optimiser-state shapes), checked before the state is restored so
  a mismatch is reported by name instead of as a shape trace.

Saves are asynchronous; Orbax writes each step to a temporary directory and
renames it only once complete, so a crash mid-save leaves the previous
checkpoint as the latest one. The last `keep` checkpoints are kept, plus the
`keep_best` with the lowest eval error.
"""
from __future__ import annotations

import logging
import pathlib
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm


VARIABLE_KEYS = ("params", "batch_stats")
STATE_KEYS = ("params", "batch_stats", "opt_state")


def _eval_error(metrics: Dict[str, float]) -> float:
  return float(metrics["error"])


class _NoMetricsWarningFilter(logging.Filter):
  """Checkpoints between evaluations have no metrics by design; Orbax warns for each."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoMetricsWarningFilter())


class CheckpointMismatchError(ValueError):
  """A checkpoint was written by a different model or optimiser configuration."""


def _flat_shapes(tree: Any) -> Dict[str, List[int]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): list(np.shape(leaf)) for path, leaf in flat}


def fingerprint(model_config: Dict[str, Any], num_classes: int, image_shape: Tuple[int, ...],
                abstract_state: Any) -> Dict[str, Any]:
  """What must match for a checkpoint to restore into this run (a `TrainState`, or a
  model's `{"params", "batch_stats"}` when only the variables are restored)."""
  if isinstance(abstract_state, dict):  # {"params", "batch_stats"} of a model, no optimiser
    trees = {k: abstract_state.get(k, {}) for k in VARIABLE_KEYS}
  else:  # a TrainState
    trees = {k: getattr(abstract_state, k) for k in STATE_KEYS}
  return {
      "model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(model_config.items())},
      "num_classes": int(num_classes),
      "image_shape": [int(d) for d in image_shape],
      **{k: _flat_shapes(v) for k, v in trees.items()},
  }


def _describe_mismatch(saved: Dict[str, Any], current: Dict[str, Any],
                       tree_keys: Tuple[str, ...] = STATE_KEYS) -> Optional[str]:
  for key in ("model", "num_classes", "image_shape"):
    if saved.get(key) != current[key]:
      if key == "model":
        a, b = saved.get(key, {}), current[key]
        diffs = [f"model.{k}: checkpoint {a.get(k)!r} vs config {b.get(k)!r}"
                 for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return "; ".join(diffs)
      return f"{key}: checkpoint {saved.get(key)!r} vs config {current[key]!r}"
  for key in tree_keys:
    a, b = saved.get(key, {}), current[key]
    if a != b:
      missing = sorted(set(b) - set(a))
      extra = sorted(set(a) - set(b))
      shape = [f"{k}: checkpoint {a[k]} vs config {b[k]}" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
      parts = []
      if shape:
        parts.append(f"{key} shapes differ ({'; '.join(shape[:3])})")
      if missing:
        parts.append(f"{key} not in checkpoint: {', '.join(missing[:3])}")
      if extra:
        parts.append(f"{key} only in checkpoint: {', '.join(extra[:3])}")
      return "; ".join(parts)
  return None


class Checkpointer:
  """A thin layer over `orbax.checkpoint.CheckpointManager` for `workdir/checkpoints`."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 3, keep_best: int = 1,
               async_save: bool = True, create: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    if not create and not self.directory.is_dir():
      raise FileNotFoundError(f"no checkpoint directory {self.directory}: is {self.directory.parent} "
                              "the --workdir of a `resnet-jax train` run?")
    policies = [ocm.LatestN(n=max(int(keep), 1))]
    if keep_best:
      policies.append(ocm.BestN(get_metric_fn=_eval_error, reverse=True,
                                n=int(keep_best), keep_checkpoints_without_metrics=False))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            # Orbax records a save's metrics only when `best_fn` is set; BestN needs them.
            best_fn=_eval_error, best_mode="min",
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=create))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The kept checkpoint with the lowest eval error (None if none was evaluated)."""
    scored = []
    for step in self.manager.all_steps():
      metrics = self.manager.metrics(step)
      if metrics and "error" in metrics:
        scored.append((float(metrics["error"]), step))
    return min(scored)[1] if scored else None

  def save(self, step: int, state: Any, metric_sums: Any, data_state: Dict[str, Any],
           meta: Dict[str, Any], eval_metrics: Optional[Dict[str, float]] = None) -> bool:
    """Starts an (async) save of `step`; `eval_metrics["error"]` ranks it for keep-best."""
    if step in self.manager.all_steps():
      return False
    return self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave({"train": state, "metrics": metric_sums}),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)),
        metrics=dict(eval_metrics) if eval_metrics else None,
        force=True)

  def read_meta(self, step: int) -> Dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state: Any, abstract_metric_sums: Any,
              meta: Dict[str, Any]) -> Tuple[Any, Any, Dict[str, Any]]:
    """Restores `step` after checking its fingerprint against `meta`."""
    problem = _describe_mismatch(self.read_meta(step), meta)
    if problem:
      raise CheckpointMismatchError(
          f"checkpoint {self.directory / str(step)} does not match this config: {problem} "
          "(use a fresh --workdir, or the config that wrote it)")
    restored = self.manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore({"train": abstract_state,
                                             "metrics": abstract_metric_sums}),
            data=ocp.args.JsonRestore()))
    logging.info("restored checkpoint %s", self.directory / str(step))
    return restored["state"]["train"], restored["state"]["metrics"], restored["data"]

  def restore_variables(self, step: int, abstract_variables: Dict[str, Any],
                        meta: Dict[str, Any]) -> Dict[str, Any]:
    """Only `{"params", "batch_stats"}` of `step` (an Orbax partial restore), as numpy arrays.

    `meta` is a `fingerprint` whose optimiser-state entry is ignored, so no optimiser
    config is needed.
    """
    problem = _describe_mismatch(self.read_meta(step), meta, VARIABLE_KEYS)
    if problem:
      raise CheckpointMismatchError(
          f"checkpoint {self.directory / str(step)} does not match this model: {problem}")
    target = {"train": {k: abstract_variables.get(k, {}) for k in VARIABLE_KEYS}}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = ocp.PyTreeCheckpointer().restore(
        self.directory / str(step) / "state",
        args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True))
    return {k: restored["train"][k] for k in VARIABLE_KEYS}

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
