"""One training process's hold on a run's workdir: checkpoints, metrics, the sessions log.

`TrainingSession` is a context manager. Entering checks the workdir (layout version, the
recipe of its checkpoints) and opens the writers; `restore_or_initialize` gives the
loop the run's starting `Progress`; `save` checkpoints it (never a diverged state).
Leaving (or `end`, for one run of a packed group that stops early), normally or by an
error, records how the run ended in `sessions.jsonl`, waits for the last asynchronous
save and closes the writers, in that order, without letting a cleanup error hide the
error that ended the run.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional

import jax

from resnet_jax import errors
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.storage import integrity
from resnet_jax.storage.workdir import Workdir
from resnet_jax.train import build
from resnet_jax.train import config as config_lib
from resnet_jax.train import ema as ema_lib
from resnet_jax.train import load as load_lib
from resnet_jax.train import report
from resnet_jax.train import state as state_lib
from resnet_jax.train import step as step_lib

Metrics = Dict[str, Any]


class NonFiniteLossError(errors.Error, RuntimeError):
  """The training loss or gradient became NaN or Inf; the run stops instead of continuing."""


@dataclasses.dataclass
class Progress:
  """What the loop carries from one dispatch to the next (updated in place)."""
  state: state_lib.TrainState
  sums: Metrics        # the train metric sums of the current logging window, on the devices
  step: int
  dispatches: int = 0


class TrainingSession:
  """See the module docstring; `exp` is the built (validated) experiment, `config_spec` the
  `--config` value (named in the advice after a NaN)."""

  def __init__(self, exp: build.Experiment, workdir: "Workdir | str | os.PathLike", label: str = "",
               config_spec: Optional[str] = None):
    config = exp.config
    workdir = Workdir(workdir)
    self.exp, self.workdir, self.config_spec = exp, workdir, config_spec
    self.is_chief = jax.process_index() == 0
    workdir.check_format(write=self.is_chief)
    self.abstract_state = state_lib.abstract_train_state(exp.model, exp.tx, exp.mesh, exp.image_shape, config.seed,
                                                         ema=ema_lib.enabled(config))
    self.meta = {**integrity.fingerprint(build.model_spec(config), exp.num_classes, exp.image_shape,
                                         self.abstract_state),
                 integrity.CONFIG_KEY: config_lib.to_json_value(config)}  # the recipe a resume must keep
    self.checkpointer = workdir.checkpointer(keep=config.keep_checkpoints, keep_best=config.keep_best_checkpoints,
                                             async_save=config.async_checkpoints, rank_by=ema_lib.ranking(config))
    try:  # Orbax's threads keep a process alive until the checkpointer is closed
      if self.checkpointer.latest_step() is not None:
        workdir.check_resumable(config_lib.to_json_value(config), self.checkpointer.saved_config(),
                                defaults=build.field_defaults(config))
      self.writer = workdir.metric_writer(prefix=label)
    except BaseException:
      self.checkpointer.close()
      raise
    self.sessions = workdir.session_log()
    self.step = 0           # the run's step: set at the start, kept current by its group
    self.stopped = ""       # why the run stopped before its end: "preempted" | "interrupted" | "time limit"
    self._finished = False
    self._closed = False

  # -- start -------------------------------------------------------------------------
  def restore_or_initialize(self, train_iter) -> Progress:
    """The newest readable checkpoint's progress (and data position), else a new state
    (with `config.init_from`'s weights when set); saves the config and logs the start."""
    exp, config = self.exp, self.exp.config
    replicated = mesh_lib.replicated(exp.mesh)
    abstract_sums = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                                 jax.eval_shape(step_lib.zero_train_metrics))
    restored = self.checkpointer.restore_newest(
        lambda step: self.checkpointer.restore(step, self.abstract_state, abstract_sums, self.meta),
        log=self.writer.print, set_aside=self.is_chief)
    resumed_from = None
    if restored is not None:
      step, (state, sums, data_state) = restored
      train_iter.set_state(data_state)
      resumed_from = str(self.checkpointer.directory / str(step))
      if step < exp.total_steps:  # a finished run says so in one line (`report.finished_line`)
        self.writer.print(f"resumed from {resumed_from}")
    else:
      state = state_lib.create_train_state(exp.model, exp.tx, exp.mesh, exp.image_shape, config.seed,
                                           ema=ema_lib.enabled(config))
      sums = step_lib.new_metrics(step_lib.zero_train_metrics, exp.mesh)
      if config.get("init_from"):
        state, source = load_lib.init_from(config.init_from, state, exp.mesh, exp.num_classes, exp.image_shape)
        self.writer.print(f"initialised params and BatchNorm statistics from {source}")
    if self.is_chief:
      config_lib.save_config(config, self.workdir)
      if exp.pipeline.eval_preprocessing is not None:  # what `load_network` hands back with the weights
        load_lib.record_preprocessing_of(self.workdir, exp.pipeline.eval_preprocessing)
    progress = Progress(state, sums, int(jax.device_get(state.step)))
    self.step = progress.step
    self.sessions.start(self.step, resumed_from)
    return progress

  # -- during ------------------------------------------------------------------------
  def check_finite(self, sums: Metrics) -> None:
    """Raises `NonFiniteLossError` naming the first bad step and the last good checkpoint."""
    bad = int(jax.device_get(sums["first_nonfinite_step"]))
    if bad >= 0:
      good = self.checkpointer.latest_step()
      advice = report.diverged_advice(self.workdir, self.checkpointer.directory, good, self.config_spec)
      raise NonFiniteLossError(f"training loss or gradient is NaN/Inf at step {bad + 1}; stopped. {advice}")

  def save(self, progress: Progress, train_iter, eval_metrics: Optional[Metrics] = None) -> None:
    """Starts an asynchronous checkpoint of `progress` (never of a diverged state)."""
    self.check_finite(progress.sums)
    self.workdir.check_lock()  # a lock file removed, or a gs:// lease taken over, under this run
    self.writer.flush()  # every record up to the checkpoint is written before it
    self.checkpointer.save(progress.step, progress.state, progress.sums, train_iter.get_state(), self.meta,
                           eval_metrics)

  def save_and_stop(self, progress: Progress, train_iter, cause: str) -> None:
    """Saves `progress` and waits for it: the run stops before its end (`cause`, see `report`)."""
    self.save(progress, train_iter)
    self.checkpointer.wait()
    self.writer.print(report.stopped_line(cause, progress.step, self.checkpointer.directory))
    self.stopped = report.stop_reason(cause)

  def finish(self) -> None:
    """Waits for the last asynchronous save (its failure is an error of the run)."""
    self.checkpointer.wait()
    self._finished = True

  def last_record(self, kind: str) -> Metrics:
    return self.workdir.last_record(kind, log=self.writer.print)

  # -- end ---------------------------------------------------------------------------
  def __enter__(self) -> "TrainingSession":
    return self

  def __exit__(self, exc_type, exc, traceback) -> None:
    self.end(exc)

  def end(self, error: Optional[BaseException] = None) -> None:
    """Records how the run ended (`error`, a stop, or its end) and closes the writers; once."""
    if self._closed:
      return
    if error is None and not self._finished:
      try:
        self.finish()
      except BaseException as e:  # the run's error now: record it, then raise it
        self._close(_end_reason(e))
        raise
    self._close((self.stopped or "finished") if error is None else _end_reason(error))

  def _close(self, reason: str) -> None:
    """Records the end, then closes; after an error, cleanup errors (a full disk fails them
    all) are dropped so that the error in flight is the one reported."""
    self._closed = True
    ended_well = reason in ("finished", report.PREEMPTED, report.INTERRUPTED, report.TIME_LIMIT)
    closing = (lambda: self.sessions.end(self.step, int(self.exp.config.global_batch_size), reason),
               self.checkpointer.close, self.writer.close)
    first_error = None
    for close in closing:
      try:
        close()
      except Exception as e:  # pylint: disable=broad-except
        first_error = first_error or e
    if ended_well and first_error is not None:
      raise first_error


def _end_reason(error: BaseException) -> str:
  """`Type: first line`, as `sessions.jsonl` records an ending error."""
  return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
