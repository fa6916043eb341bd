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
lowest eval error (`rank_by`: "error", or "ema_error" for a run that ranks by the moving
average of its weights).

Integrity (`integrity.py`): "meta" also records the config of the run (the recipe a resume
must keep; `config.json` is a copy) and SHA-256 checksums of every array of "state", of the
data position and of the eval metrics, computed from the values at save time and compared
with the values read back at restore; "meta" itself is sealed by a checksum of its
content. A mismatch (a bit flipped on disk, a file overwritten) is an unreadable
checkpoint, never a silently different model. Checkpoints of earlier versions, without
checksums, are read unchecked.

Faults: a checkpoint that cannot be read (truncated or damaged files, a checksum
mismatch) is reported in one line and the next older one is used (`restore_newest`, the
one restore-with-fallback of training, `eval` and `load_network`); a training run moves the
unreadable one to `checkpoints_unreadable/` (never deletes it) so that it trains that step
again. A save that fails (disk full, permissions, no inodes)
raises `CheckpointWriteError` naming the step, the reason and the intact checkpoints; no
Orbax thread is left waiting (the temporary directories are created before `save`
returns), and Orbax's own tracebacks of the failure are not printed.
"""
from __future__ import annotations

import errno
import logging
import pathlib
import resource
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from resnet_jax import errors
from resnet_jax.errors import one_line
from resnet_jax.storage import files
from resnet_jax.storage import integrity
from resnet_jax.storage import orbax_quiet
from resnet_jax.storage.integrity import CHECKSUMS_KEY, CONFIG_KEY, SEAL_KEY  # noqa: F401  (re-exported)

T = TypeVar("T")
Log = Callable[[str], None]
_LOG = logging.getLogger(__name__)  # under "resnet_jax": never Python's root logger
UNREADABLE_DIR = "checkpoints_unreadable"  # beside the checkpoints' directory


class CheckpointMismatchError(errors.InputError):
  """A checkpoint was written by a different model or optimiser configuration."""


class CheckpointWriteError(errors.Error, OSError):
  """A checkpoint could not be written (disk full, permissions); earlier ones are intact."""


class UnreadableCheckpointError(errors.Error, RuntimeError):
  """No checkpoint of the directory (or not the one asked for) could be read: train in a new
  workdir, restore the files, or name another step (exit 2)."""
  exit_code = 2


class ChecksumMismatchError(errors.Error, RuntimeError):
  """What a checkpoint holds differs from what was saved (the files changed on disk)."""


RANK_BY = "error"   # the eval metric that ranks checkpoints for keep-best, unless asked otherwise


def _ranking(rank_by: str) -> Callable[[Dict[str, float]], float]:
  """The keep-best score of a checkpoint's eval metrics (one without the metric ranks last)."""
  return lambda metrics: float(metrics[rank_by]) if rank_by in metrics else float("inf")


def logged_metric(rank_by: str) -> Tuple[str, str]:
  """(record kind, field) of `metrics.jsonl` that holds `rank_by`: the EMA's results ("ema_"
  prefixed in a checkpoint's metrics) have their own records, "eval_ema"."""
  return ("eval_ema", rank_by[len("ema_"):]) if rank_by.startswith("ema_") else ("eval", rank_by)


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
# The index of a checkpoint's arrays, which Orbax merges from each process's part when a save
# finishes (OCDBT): without it no array can be read though every other file is there (what a path
# that Orbax's glob misread left behind, reported as a success).
ARRAY_INDEX = "state/manifest.ocdbt"


def complete_steps(directory: Any) -> List[int]:
  """The steps of `directory` whose checkpoint is complete, sorted: Orbax's finalized steps
  (renamed into place; on an object store, with their commit marker), never a save in flight."""
  return sorted(ocp.step.checkpoint_steps(directory))


class _CheckpointManager(ocp.CheckpointManager):
  """Orbax's manager, reading a checkpoint's damaged eval-metrics file as no metrics.

  Orbax reads every checkpoint's metrics when it opens the directory and tolerates a
  missing file, but a damaged one made the whole directory unopenable; without metrics
  the checkpoint is still restored (and checked) like any other.
  """

  def _get_metrics(self, step: int) -> Any:
    try:
      return super()._get_metrics(step)
    except ValueError as e:  # json.JSONDecodeError
      _LOG.warning(
          "the eval metrics of checkpoint %s are damaged (%s); reading it as not evaluated",
          self.directory / str(step), one_line(e))
      return None


def _manager_options(keep: int, keep_best: int, async_save: bool, create: bool,
                     rank_by: str = RANK_BY) -> ocp.CheckpointManagerOptions:
  policies = [ocm.LatestN(n=max(int(keep), 1))]
  if keep_best:
    policies.append(ocm.BestN(get_metric_fn=_ranking(rank_by), reverse=True,
                              n=int(keep_best), keep_checkpoints_without_metrics=False))
  return ocp.CheckpointManagerOptions(
      preservation_policy=ocm.AnyPreservationPolicy(policies),
      # Orbax records a save's metrics only when `best_fn` is set; BestN needs them.
      best_fn=_ranking(rank_by), best_mode="min",
      enable_async_checkpointing=async_save,
      # A temporary directory Orbax cannot create (no inodes, read-only) then fails in
      # `save` itself; created in the background, its failure left Orbax's other
      # threads waiting for it for minutes, and the process could not exit.
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
      # Only a writer removes Orbax's temporary directories of unfinished saves: a reader
      # (`create=False`: eval, load_variables) may run beside a training process whose
      # asynchronous save is in flight.
      cleanup_tmp_directories=create,
      create=create)


class Checkpointer:
  """A thin layer over `orbax.checkpoint.CheckpointManager` for a workdir's `checkpoints/`
  (`Workdir.checkpointer` makes one); unreadable checkpoints are set aside beside it, in
  `checkpoints_unreadable/`."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 3, keep_best: int = 1,
               async_save: bool = True, create: bool = True, rank_by: str = RANK_BY):
    self.directory = files.as_path(directory)
    files.check_path(self.directory)
    self.rank_by = rank_by
    self.unreadable_dir = self.directory.parent / UNREADABLE_DIR
    self._files = files.files_for(self.directory)
    if not create and not self._files.is_dir(self.directory):
      raise errors.MissingError(f"no checkpoint directory {self.directory}: is {self.directory.parent} "
                              "the --workdir of a `resnet-jax train` run?")
    orbax_quiet.install()
    self.manager = _CheckpointManager(self.directory,
                                      options=_manager_options(keep, keep_best, async_save, create, rank_by))
    self._pending: Optional[int] = None  # the step of the last save started
    self._unchecked: Optional[int] = None  # a step saved, not yet checked complete (`wait`)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> List[int]:
    """The steps of the kept checkpoints, sorted."""
    return sorted(self.manager.all_steps())

  def _write_error(self, step: Optional[int], error: BaseException, reason: str = "") -> CheckpointWriteError:
    """A one-line `CheckpointWriteError` for a failed save (of `step`, when known): `reason`, or
    the reason of `error`; the intact checkpoints listed are the complete ones other than `step`."""
    os_error = _os_error(error)
    text = str(error)
    if reason:
      pass
    elif (os_error is not None and os_error.errno in _DISK_FULL) or "No space left on device" in text:
      reason = "no space left on device"
    elif (os_error is not None and os_error.errno == errno.EMFILE) or "Too many open files" in text:
      reason = (f"too many open files: this process may open {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} "
                "(ulimit -n); raise the limit")
    elif os_error is not None and os_error.strerror:
      reason = os_error.strerror.lower()  # "read-only file system", "permission denied"
    else:
      reason = one_line(error)
    try:
      intact = [s for s in complete_steps(self.directory) if s != step]
    except Exception:  # pylint: disable=broad-except  (the storage that failed the save may fail the listing)
      intact = []
    what = f"checkpoint of step {step}" if step is not None else "a checkpoint"
    keep = (f"the earlier checkpoints are intact (steps {intact}); free space or fix the directory, then "
            "run the same command again to resume from the newest") if intact else (
            "no earlier checkpoint exists; fix the directory and run again")
    err = CheckpointWriteError(f"could not write the {what} to {self.directory}: {reason}; {keep}")
    err.errno = os_error.errno if os_error is not None else errno.EIO
    return err

  def save(self, step: int, state: Any, metric_sums: Any, data_state: Dict[str, Any],
           meta: Dict[str, Any], eval_metrics: Optional[Dict[str, float]] = None) -> bool:
    """Starts an (async) save of `step`; `eval_metrics["error"]` ranks it for keep-best.

    `eval_metrics` is stored with the checkpoint (all of it, for a finished run to report).
    Raises `CheckpointWriteError` if this save, or the previous asynchronous one, failed.
    Checksums of the arrays, `data_state` and `eval_metrics` are added to `meta` (module
    docstring).
    """
    if step in self.manager.all_steps():
      return False
    # Orbax waits for the previous asynchronous save before starting one; waiting here
    # first names the step whose save failed, not this one.
    self.wait()
    self._pending = self._unchecked = step
    metrics = {k: float(v) for k, v in eval_metrics.items()} if eval_metrics else None
    items = {"train": state, "metrics": metric_sums}
    meta = integrity.sealed({**meta, CHECKSUMS_KEY: {
        "arrays": integrity.tree_digests(items), "data": files.json_digest(data_state),
        "eval_metrics": files.json_digest(metrics) if metrics else None}})
    try:
      return self.manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(items),
              data=ocp.args.JsonSave(data_state),
              meta=ocp.args.JsonSave(meta)),
          metrics=metrics,
          force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(step, e) from e

  def eval_metrics(self, step: int) -> Dict[str, float]:
    """The eval metrics saved with `step` ({} when it was not evaluated, or when they, or the
    checkpoint's meta, do not match their checksum)."""
    metrics = dict(self.manager.metrics(step) or {})
    if metrics:
      try:
        expected = self.read_meta(step).get(CHECKSUMS_KEY, {}).get("eval_metrics", "unchecked")
      except Exception:  # pylint: disable=broad-except  (unreadable meta: restoring will say so)
        return {}
      if expected != "unchecked" and expected != files.json_digest(metrics):
        return {}
    return metrics

  def _set_aside(self, step: int) -> pathlib.Path:
    """Moves an unreadable step out of Orbax's view, keeping its files for inspection."""
    target = self.unreadable_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    self._files.move_tree(self.directory / str(step), target)
    self.manager.reload()
    return target

  def restore_newest(self, restore_one: Callable[[int], T], log: Log = _LOG.warning,
                     set_aside: bool = False, steps: Optional[List[int]] = None
                     ) -> Optional[Tuple[int, T]]:
    """`(step, restore_one(step))` of the newest readable checkpoint of `steps` (default: all
    kept ones); None if there are none.

    The one restore-with-fallback (training, `eval`, `load_network`): an unreadable
    checkpoint is reported through `log` in one line and the next older one is tried; with
    `set_aside` it is moved to `checkpoints_unreadable/` (a training run then trains that step
    again instead of skipping its save). A checkpoint of another model/optimiser raises
    `CheckpointMismatchError` (that is a config error, not damage). Raises
    `UnreadableCheckpointError` when checkpoints exist but none can be read.
    """
    failures = []
    for step in sorted(self.all_steps() if steps is None else steps, reverse=True):
      try:
        restored = restore_one(step)
      except errors.InputError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many kinds)
        failures.append(step)
        where, reason = self.directory / str(step), one_line(e)
        if set_aside:
          log(f"checkpoint {where} is unreadable ({reason}); moved it to {self._set_aside(step)}, "
              "trying the next older one")
        else:
          log(f"checkpoint {where} is unreadable ({reason}); trying the next older one")
        continue
      if failures:  # a trainer (which sets checkpoints aside) resumes; a reader uses
        log(f"{'resuming from' if set_aside else 'using'} step {step}, the newest readable checkpoint "
            f"(unreadable: steps {failures})")
      return step, restored
    if failures:
      raise UnreadableCheckpointError(
          f"no checkpoint in {self.directory} is readable (steps {failures}"
          f"{', moved to ' + str(self.unreadable_dir) if set_aside else ''}); "
          "train in a new --workdir, or restore the files")
    return None

  def _mismatch(self, step: int, what: str) -> ChecksumMismatchError:
    return ChecksumMismatchError(f"{what} of checkpoint {self.directory / str(step)} does not match the "
                                 "checksum recorded when it was saved")

  def read_meta(self, step: int) -> Dict[str, Any]:
    """The "meta" item of `step`, checked against its seal (`ChecksumMismatchError`)."""
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(meta, dict) or not integrity.seal_holds(meta):
      raise self._mismatch(step, "the meta item")
    return meta

  def saved_config(self) -> Optional[Dict[str, Any]]:
    """The config recorded by the newest checkpoint whose meta is readable (None if none
    records one: no checkpoint, or checkpoints of an earlier version)."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        meta = self.read_meta(step)
      except Exception:  # pylint: disable=broad-except  (restore_newest reports unreadable ones)
        continue
      return meta.get(CONFIG_KEY)
    return None

  def _check_arrays(self, step: int, saved_meta: Dict[str, Any], items: Any) -> None:
    """Compares the restored arrays with their checksums (those this process holds whole)."""
    expected = saved_meta.get(CHECKSUMS_KEY, {}).get("arrays")
    if expected is None:
      return
    for name, found in integrity.tree_digests(items).items():
      if expected.get(name) != found:
        raise self._mismatch(step, name)

  def _check_fingerprint(self, step: int, saved_meta: Dict[str, Any], meta: Dict[str, Any],
                         tree_keys: Tuple[str, ...], what: str, advice: str = "") -> None:
    problem = integrity.describe_mismatch(saved_meta, meta, tree_keys)
    if problem:
      raise CheckpointMismatchError(f"checkpoint {self.directory / str(step)} does not match this {what}: "
                                    f"{problem}{advice}")

  def restore(self, step: int, abstract_state: Any, abstract_metric_sums: Any,
              meta: Dict[str, Any]) -> Tuple[Any, Any, Dict[str, Any]]:
    """`(state, metric sums, data state)` of `step`, after checking its fingerprint against
    `meta`, then its checksums."""
    saved_meta = self.read_meta(step)
    self._check_fingerprint(step, saved_meta, meta, integrity.STATE_KEYS, "config",
                           " (use a fresh --workdir, or the config that wrote it)")
    restored = self.manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore({"train": abstract_state,
                                             "metrics": abstract_metric_sums}),
            data=ocp.args.JsonRestore()))
    self._check_arrays(step, saved_meta, restored["state"])
    expected_data = saved_meta.get(CHECKSUMS_KEY, {}).get("data")
    if expected_data is not None and expected_data != files.json_digest(restored["data"]):
      raise self._mismatch(step, "the data-iterator position")
    _LOG.info("restored checkpoint %s", self.directory / str(step))
    return restored["state"]["train"], restored["state"]["metrics"], restored["data"]

  def restore_variables(self, step: int, abstract_variables: Dict[str, Any],
                        meta: Dict[str, Any], weights: str = "raw") -> Dict[str, Any]:
    """Only `{"params", "batch_stats"}` of `step` (an Orbax partial restore), as numpy arrays:
    the weights, or with `weights="ema"` their moving average (the state's "ema").

    `meta` is a `fingerprint` whose optimiser-state entry is ignored, so no optimiser
    config is needed.
    """
    saved_meta = self.read_meta(step)
    self._check_fingerprint(step, saved_meta, meta, integrity.VARIABLE_KEYS, "model")
    variables = {k: abstract_variables.get(k, {}) for k in integrity.VARIABLE_KEYS}
    target = {"train": variables if weights == "raw" else {"ema": variables}}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = ocp.PyTreeCheckpointer().restore(
        self.directory / str(step) / "state",
        args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True))
    self._check_arrays(step, saved_meta, restored)
    tree = restored["train"] if weights == "raw" else restored["train"]["ema"]
    return {k: tree[k] for k in integrity.VARIABLE_KEYS}

  def wait(self) -> None:
    """Waits for the asynchronous save; raises `CheckpointWriteError` if it failed or left a
    checkpoint that cannot be read (no success is reported over an unreadable save)."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(self._pending, e) from e
    step, self._unchecked = self._unchecked, None
    if step is not None and jax.process_index() == 0:  # process 0 finalises a save: its files are complete
      self._check_complete(step)

  def _check_complete(self, step: int) -> None:
    """Raises `CheckpointWriteError` unless `step` was finalised with its array index (`ARRAY_INDEX`):
    a cheap look at two entries, not a read of the arrays."""
    index = self.directory / str(step) / ARRAY_INDEX
    try:
      complete = step in complete_steps(self.directory) and self._files.is_file(index)
    except Exception as e:  # pylint: disable=broad-except  (an object store that fails the listing)
      raise self._write_error(step, e) from e
    if not complete:
      raise self._write_error(step, RuntimeError(), reason=f"the save ended without {index}, so the checkpoint "
                              "is unreadable")

  def close(self) -> None:
    try:
      self.manager.close()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(self._pending, e) from e
