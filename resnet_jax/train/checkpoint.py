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

Integrity: "meta" also records the config of the run (the recipe a resume must keep;
`config.json` is a copy) and SHA-256 checksums of every array of "state", of the data
position and of the eval metrics, computed from the values at save time and compared
with the values read back at restore; "meta" itself is sealed by a checksum of its
content. A mismatch (a bit flipped on disk, a file overwritten) is an unreadable
checkpoint, never a silently different model. Checkpoints of earlier versions, without
checksums, are read unchecked.

Faults: a checkpoint that cannot be read (truncated or damaged files, a checksum
mismatch) is reported in one line and the next older one is used (`restore_newest`); a
training run moves the unreadable one to `checkpoints_unreadable/` (never deletes it) so
that it trains that step again. A save that fails (disk full, permissions, no inodes)
raises `CheckpointWriteError` naming the step, the reason and the intact checkpoints; no
Orbax thread is left waiting (the temporary directories are created before `save`
returns), and Orbax's own tracebacks of the failure are not printed.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import pathlib
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from resnet_jax.train import workdir_io


VARIABLE_KEYS = ("params", "batch_stats")
UNREADABLE_DIR = "checkpoints_unreadable"
STATE_KEYS = ("params", "batch_stats", "opt_state")
# Keys of "meta" (besides the fingerprint): the run's config, the checksums of the other
# items, and the checksum of "meta" itself.
CONFIG_KEY = "config"
CHECKSUMS_KEY = "checksums"
SEAL_KEY = "meta_sha256"


def _eval_error(metrics: Dict[str, float]) -> float:
  return float(metrics["error"])


class _NoMetricsWarningFilter(logging.Filter):
  """Checkpoints between evaluations have no metrics by design; Orbax warns for each."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


class _OrbaxTracebackFilter(logging.Filter):
  """Orbax logs each failure of a background save or restore with its traceback, once per
  thread, and asyncio once more per write left unawaited (pages for one full disk); the
  failure reaches `Checkpointer`, which reports it in one line, so these tracebacks are
  dropped (Orbax's other messages pass)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or not record.exc_info:
      return True
    if record.name == "asyncio":  # "Task/Future exception was never retrieved" of Orbax's I/O
      return not ("/orbax/checkpoint/" in record.getMessage() or _raised_in_orbax(record.exc_info[2]))
    return not _in_orbax(record.pathname)


def _in_orbax(filename: str) -> bool:
  return "orbax" in pathlib.PurePath(filename).parts


def _raised_in_orbax(traceback: Any) -> bool:
  while traceback is not None:
    if _in_orbax(traceback.tb_frame.f_code.co_filename):
      return True
    traceback = traceback.tb_next
  return False


logging.getLogger("absl").addFilter(_NoMetricsWarningFilter())
for _logger in ("absl", "asyncio"):
  logging.getLogger(_logger).addFilter(_OrbaxTracebackFilter())


def _is_loose_end_of_failed_orbax_io(unraisable: Any) -> bool:
  """The leftovers of an Orbax read or write that failed, which Python reports as
  "unraisable" tracebacks (on stderr, any time later, even at exit): TensorStore completing
  a part of it after Orbax closed the event loop ("Event loop is closed" in
  `call_soon_threadsafe`), and Orbax coroutines of it collected with their error."""
  error, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
  if code is not None:
    return _in_orbax(code.co_filename)
  if unraisable.object is not None or not isinstance(error, RuntimeError) or str(error) != "Event loop is closed":
    return False
  frames, tb = set(), unraisable.exc_traceback
  while tb is not None:
    frames.add(tb.tb_frame.f_code.co_name)
    tb = tb.tb_next
  return "call_soon_threadsafe" in frames


def _quiet_loose_ends_of_failed_orbax_io() -> None:
  """Drops `_is_loose_end_of_failed_orbax_io` reports: the failure itself reaches the caller
  (`CheckpointWriteError`, an unreadable checkpoint), in one line."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_loose_ends_of_failed_orbax_io", False):
    return

  def hook(unraisable):
    if not _is_loose_end_of_failed_orbax_io(unraisable):
      previous(unraisable)
  hook.drops_loose_ends_of_failed_orbax_io = True
  sys.unraisablehook = hook


class CheckpointMismatchError(ValueError):
  """A checkpoint was written by a different model or optimiser configuration."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, permissions); earlier ones are intact."""


class UnreadableCheckpointError(RuntimeError):
  """No checkpoint of the directory (or not the one asked for) could be read."""


class ChecksumMismatchError(RuntimeError):
  """What a checkpoint holds differs from what was saved (the files changed on disk)."""


def _leaf_name(path: Tuple[Any, ...]) -> str:
  """"train/params/stem_conv/kernel": the same for a `TrainState` field and a dict key."""
  parts = []
  for key in path:
    for attribute in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def array_digest(array: np.ndarray) -> str:
  """SHA-256 of an array's dtype, shape and bytes."""
  array = np.asarray(array)
  digest = hashlib.sha256(f"{array.dtype.str}{tuple(array.shape)}".encode())
  digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
  return digest.hexdigest()


def _local_copies(leaves: List[Any]) -> List[Optional[np.ndarray]]:
  """Host copies of the leaves this process holds whole (a replicated array's local replica);
  None for an array sharded over processes."""
  fetch = [x for x in leaves if not isinstance(x, jax.Array) or x.is_fully_addressable]
  fetched = iter(jax.device_get(fetch))
  out = []
  for x in leaves:
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      out.append(np.asarray(next(fetched)))
    elif x.sharding.is_fully_replicated:
      out.append(np.asarray(x.addressable_data(0)))
    else:
      out.append(None)
  return out


def tree_digests(tree: Any) -> Dict[str, str]:
  """Leaf name -> `array_digest`, for every leaf this process holds whole."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  copies = _local_copies([leaf for _, leaf in flat])
  return {_leaf_name(path): array_digest(copy) for (path, _), copy in zip(flat, copies) if copy is not None}


def _sealed(meta: Dict[str, Any]) -> Dict[str, Any]:
  return {**meta, SEAL_KEY: workdir_io.json_digest(meta)}


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
      logging.warning("the eval metrics of checkpoint %s are damaged (%s); reading it as not evaluated",
                      self.directory / str(step), one_line(e))
      return None


def finished_steps(directory) -> List[int]:
  """Steps with a complete (renamed) checkpoint directory in `directory`, sorted ([] if none),
  read from the listing alone (no Orbax manager)."""
  directory = workdir_io.as_path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


class Checkpointer:
  """A thin layer over `orbax.checkpoint.CheckpointManager` for `workdir/checkpoints`."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 3, keep_best: int = 1,
               async_save: bool = True, create: bool = True):
    self.directory = workdir_io.as_path(directory)
    if not create and not self.directory.is_dir():
      raise FileNotFoundError(f"no checkpoint directory {self.directory}: is {self.directory.parent} "
                              "the --workdir of a `resnet-jax train` run?")
    policies = [ocm.LatestN(n=max(int(keep), 1))]
    if keep_best:
      policies.append(ocm.BestN(get_metric_fn=_eval_error, reverse=True,
                                n=int(keep_best), keep_checkpoints_without_metrics=False))
    self.manager = _CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            # Orbax records a save's metrics only when `best_fn` is set; BestN needs them.
            best_fn=_eval_error, best_mode="min",
            enable_async_checkpointing=async_save,
            # A temporary directory Orbax cannot create (no inodes, read-only) then fails in
            # `save` itself; created in the background, its failure left Orbax's other
            # threads waiting for it for minutes, and the process could not exit.
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
            # Only a writer removes Orbax's temporary directories of unfinished saves: a reader
            # (`create=False`: eval, load_variables) may run beside a training process whose
            # asynchronous save is in flight.
            cleanup_tmp_directories=create,
            create=create))
    self._pending: Optional[int] = None  # the step of the last save started
    _quiet_loose_ends_of_failed_orbax_io()

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The kept checkpoint with the lowest eval error (None if none was evaluated)."""
    scored = []
    for step in self.manager.all_steps():
      metrics = self.eval_metrics(step)
      if "error" in metrics:
        scored.append((float(metrics["error"]), step))
    return min(scored)[1] if scored else None

  def _write_error(self, step: Optional[int], error: BaseException) -> CheckpointWriteError:
    """A one-line `CheckpointWriteError` for a failed save (of `step`, when known)."""
    os_error = _os_error(error)
    text = str(error)
    if (os_error is not None and os_error.errno in _DISK_FULL) or "No space left on device" in text:
      reason = "no space left on device"
    elif os_error is not None and os_error.strerror:
      reason = os_error.strerror.lower()  # "read-only file system", "permission denied"
    else:
      reason = one_line(error)
    try:
      intact = finished_steps(self.directory)
    except OSError:
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
    self._pending = step
    metrics = {k: float(v) for k, v in eval_metrics.items()} if eval_metrics else None
    items = {"train": state, "metrics": metric_sums}
    meta = _sealed({**meta, CHECKSUMS_KEY: {
        "arrays": tree_digests(items), "data": workdir_io.json_digest(data_state),
        "eval_metrics": workdir_io.json_digest(metrics) if metrics else None}})
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
      if expected != "unchecked" and expected != workdir_io.json_digest(metrics):
        return {}
    return metrics

  def _set_aside(self, step: int) -> pathlib.Path:
    """Moves an unreadable step out of Orbax's view, keeping its files for inspection."""
    target = self.directory.parent / UNREADABLE_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    workdir_io.move_tree(self.directory / str(step), target)
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

  def _mismatch(self, step: int, what: str) -> ChecksumMismatchError:
    return ChecksumMismatchError(f"{what} of checkpoint {self.directory / str(step)} does not match the "
                                 "checksum recorded when it was saved")

  def read_meta(self, step: int) -> Dict[str, Any]:
    """The "meta" item of `step`, checked against its seal (`ChecksumMismatchError`)."""
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(meta, dict):
      raise self._mismatch(step, "the meta item")
    if SEAL_KEY in meta or CHECKSUMS_KEY in meta:  # written together: one alone is damage
      content = {k: v for k, v in meta.items() if k != SEAL_KEY}
      if meta.get(SEAL_KEY) != workdir_io.json_digest(content):
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
    for name, found in tree_digests(items).items():
      if expected.get(name) != found:
        raise self._mismatch(step, name)

  def restore(self, step: int, abstract_state: Any, abstract_metric_sums: Any,
              meta: Dict[str, Any]) -> Tuple[Any, Any, Dict[str, Any]]:
    """Restores `step` after checking its fingerprint against `meta`, then its checksums."""
    saved_meta = self.read_meta(step)
    problem = describe_mismatch(saved_meta, meta)
    if problem:
      raise CheckpointMismatchError(
          f"checkpoint {self.directory / str(step)} does not match this config: {problem} "
          "(use a fresh --workdir, or the config that wrote it)")
    restored = self.manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore({"train": abstract_state,
                                             "metrics": abstract_metric_sums}),
            data=ocp.args.JsonRestore()))
    self._check_arrays(step, saved_meta, restored["state"])
    expected_data = saved_meta.get(CHECKSUMS_KEY, {}).get("data")
    if expected_data is not None and expected_data != workdir_io.json_digest(restored["data"]):
      raise self._mismatch(step, "the data-iterator position")
    logging.info("restored checkpoint %s", self.directory / str(step))
    return restored["state"]["train"], restored["state"]["metrics"], restored["data"]

  def restore_variables(self, step: int, abstract_variables: Dict[str, Any],
                        meta: Dict[str, Any]) -> Dict[str, Any]:
    """Only `{"params", "batch_stats"}` of `step` (an Orbax partial restore), as numpy arrays.

    `meta` is a `fingerprint` whose optimiser-state entry is ignored, so no optimiser
    config is needed.
    """
    saved_meta = self.read_meta(step)
    problem = describe_mismatch(saved_meta, meta, VARIABLE_KEYS)
    if problem:
      raise CheckpointMismatchError(
          f"checkpoint {self.directory / str(step)} does not match this model: {problem}")
    target = {"train": {k: abstract_variables.get(k, {}) for k in VARIABLE_KEYS}}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = ocp.PyTreeCheckpointer().restore(
        self.directory / str(step) / "state",
        args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True))
    self._check_arrays(step, saved_meta, restored)
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
