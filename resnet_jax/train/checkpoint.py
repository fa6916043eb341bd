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
renames it only once complete, so a crash mid-save (even `kill -9`) leaves the
previous checkpoint as the latest one, and the next run removes the partial
directory. The last `keep` checkpoints are kept, plus the `keep_best` with the
lowest eval error.

Faults: a checkpoint that cannot be read (truncated or damaged files) is reported
in one line and the next older one is used (`restore_newest`); a training run
moves the unreadable one to `checkpoints_unreadable/` (never deletes it) so that
it trains that step again. A save that fails (disk full, permissions) raises
`CheckpointWriteError` naming the step, the reason and the intact checkpoints.
"""
from __future__ import annotations

import errno
import logging
import pathlib
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm


VARIABLE_KEYS = ("params", "batch_stats")
UNREADABLE_DIR = "checkpoints_unreadable"
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


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, permissions); earlier ones are intact."""


class UnreadableCheckpointError(RuntimeError):
  """No checkpoint of the directory (or not the one asked for) could be read."""


def one_line(error: BaseException, limit: int = 240) -> str:
  """`Type: first line of the message`, shortened (Orbax/TensorStore errors span pages)."""
  text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _os_error(error: BaseException) -> Optional[OSError]:
  """The OSError in `error`'s chain, or one recognised in the text (TensorStore's messages)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno is not None:
      return error
    error = error.__cause__ or error.__context__
  return None


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


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


def describe_mismatch(saved: Dict[str, Any], current: Dict[str, Any],
                      tree_keys: Tuple[str, ...] = STATE_KEYS) -> Optional[str]:
  """How two `fingerprint`s differ, in one line (the first differing part); None if they match.

  Compares the model fields, class count and image shape, then the shapes of each tree in
  ``tree_keys`` (missing, extra and reshaped entries, at most three of each).
  """
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
            # Only a writer removes Orbax's temporary directories of unfinished saves: a reader
            # (`create=False`: eval, load_variables) may run beside a training process whose
            # asynchronous save is in flight.
            cleanup_tmp_directories=create,
            create=create))
    self._pending: Optional[int] = None  # the step of the last save started

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

  def _write_error(self, step: Optional[int], error: BaseException) -> CheckpointWriteError:
    """A one-line `CheckpointWriteError` for a failed save (of `step`, when known)."""
    os_error = _os_error(error)
    text = str(error)
    if (os_error is not None and os_error.errno in _DISK_FULL) or "No space left on device" in text:
      reason = "no space left on device"
    else:
      reason = one_line(os_error or error)
    try:
      intact = sorted(self._finished_steps())
    except OSError:
      intact = []
    what = f"checkpoint of step {step}" if step is not None else "a checkpoint"
    keep = (f"the earlier checkpoints are intact (steps {intact}); free space or fix the directory, then "
            "run the same command again to resume from the newest") if intact else (
            "no earlier checkpoint exists; fix the directory and run again")
    err = CheckpointWriteError(
        os_error.errno if os_error is not None else errno.EIO,
        f"could not write the {what} to {self.directory}: {reason}; {keep}")
    return err

  def _finished_steps(self) -> List[int]:
    """Steps with a complete (renamed) checkpoint directory on disk."""
    return [int(p.name) for p in self.directory.iterdir() if p.is_dir() and p.name.isdigit()]

  def save(self, step: int, state: Any, metric_sums: Any, data_state: Dict[str, Any],
           meta: Dict[str, Any], eval_metrics: Optional[Dict[str, float]] = None) -> bool:
    """Starts an (async) save of `step`; `eval_metrics["error"]` ranks it for keep-best.

    `eval_metrics` is stored with the checkpoint (all of it, for a finished run to report).
    Raises `CheckpointWriteError` if this save, or the previous asynchronous one, failed.
    """
    if step in self.manager.all_steps():
      return False
    try:  # a failure of the previous asynchronous save surfaces here
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(self._pending, e) from e
    self._pending = step
    try:
      return self.manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave({"train": state, "metrics": metric_sums}),
              data=ocp.args.JsonSave(data_state),
              meta=ocp.args.JsonSave(meta)),
          metrics={k: float(v) for k, v in eval_metrics.items()} if eval_metrics else None,
          force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(step, e) from e

  def eval_metrics(self, step: int) -> Dict[str, float]:
    """The eval metrics saved with `step` ({} when it was not evaluated)."""
    return dict(self.manager.metrics(step) or {})

  def _set_aside(self, step: int) -> pathlib.Path:
    """Moves an unreadable step out of Orbax's view, keeping its files for inspection."""
    target = self.directory.parent / UNREADABLE_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(self.directory / str(step)), str(target))
    self.manager.reload()
    return target

  def restore_newest(self, abstract_state: Any, abstract_metric_sums: Any, meta: Dict[str, Any],
                     log: Callable[[str], None] = logging.warning, set_aside: bool = True
                     ) -> Optional[Tuple[int, Any, Any, Dict[str, Any]]]:
    """`(step, state, metric sums, data state)` of the newest readable checkpoint; None if none.

    An unreadable checkpoint is reported through `log` in one line and the next older one is
    tried; with `set_aside` it is moved to `checkpoints_unreadable/` (a training run then
    trains that step again instead of skipping its save). A checkpoint of another
    model/optimiser raises `CheckpointMismatchError` (that is a config error, not damage).
    Raises `UnreadableCheckpointError` when checkpoints exist but none can be read.
    """
    failures = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, sums, data = self.restore(step, abstract_state, abstract_metric_sums, meta)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many kinds)
        reason = one_line(e)
        failures.append(step)
        where = self.directory / str(step)
        if set_aside:
          moved = self._set_aside(step)
          log(f"checkpoint {where} is unreadable ({reason}); moved it to {moved}, trying the next older one")
        else:
          log(f"checkpoint {where} is unreadable ({reason}); trying the next older one")
        continue
      if failures:
        log(f"resuming from step {step}, the newest readable checkpoint (unreadable: steps {failures})")
      return step, state, sums, data
    if failures:
      raise UnreadableCheckpointError(
          f"no checkpoint in {self.directory} is readable (steps {failures}"
          f"{', moved to ' + str(self.directory.parent / UNREADABLE_DIR) if set_aside else ''}); "
          "train in a new --workdir, or restore the files")
    return None

  def read_meta(self, step: int) -> Dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state: Any, abstract_metric_sums: Any,
              meta: Dict[str, Any]) -> Tuple[Any, Any, Dict[str, Any]]:
    """Restores `step` after checking its fingerprint against `meta`."""
    problem = describe_mismatch(self.read_meta(step), meta)
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
    problem = describe_mismatch(self.read_meta(step), meta, VARIABLE_KEYS)
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
    """Waits for the asynchronous save; raises `CheckpointWriteError` if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(self._pending, e) from e

  def close(self) -> None:
    try:
      self.manager.close()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(self._pending, e) from e
