"""The training loop: train steps, and at their times logging, evaluation and checkpoints.

`train(config, workdir)` reads like its schedule. After restoring the newest checkpoint
(or initialising), until the last step: train up to `steps_per_dispatch` steps (never past
the next periodic action), then ask, with `itstime`, whether it is time to log
(`log_train`), to evaluate (`Evaluations.start`: dispatched, read at the next log line, so
the devices go on training meanwhile) or to save a checkpoint (`checkpoint_every_steps`
alone decides; an evaluation never forces a save), and whether SIGTERM/SIGINT asked to
stop. What the workdir holds across processes (checkpoints,
metrics, the sessions log, the lock, the signals) is `TrainingSession`'s
(`session.py`); evaluation is `evaluation.py`'s.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from resnet_jax import models
from resnet_jax.runtime import cpu_notice
from resnet_jax.train import build
from resnet_jax.train import evaluation
from resnet_jax.train import report
from resnet_jax.train import step as step_lib
from resnet_jax.train import workdir as workdir_lib
from resnet_jax.train.session import NonFiniteLossError, Progress, TrainingSession  # noqa: F401  (re-exported)

Metrics = Dict[str, Any]


def itstime(step: int, every: int, total_steps: int) -> bool:
  """Whether an action done every `every` steps is due after `step` (always after the last)."""
  return step == total_steps or step % every == 0


def next_due(step: int, periods, total_steps: int) -> int:
  """The first step after `step` at which any of the periodic actions is due."""
  return min([total_steps] + [(step // every + 1) * every for every in periods])


def _fetch(tree: Any) -> Any:
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


class TrainSteps:
  """The compiled train step, `steps_per_dispatch` steps at a time where no action falls inside."""

  def __init__(self, exp: build.Experiment):
    pipe, config = exp.pipeline, exp.config
    self.k = int(config.steps_per_dispatch)
    self.single = step_lib.make_train_step(exp.model, exp.tx, config, exp.mesh, pipe.preprocess, pipe.num_classes)
    self.multi = (step_lib.make_train_step(exp.model, exp.tx, config, exp.mesh, pipe.preprocess,
                                           pipe.num_classes, steps_per_call=self.k) if self.k > 1 else None)

  def advance(self, progress: Progress, train_iter, until: int) -> None:
    """One dispatch: K steps if `until` is at least K steps away, else one."""
    if self.multi is not None and until - progress.step >= self.k:
      progress.state, progress.sums = self.multi(progress.state, progress.sums, train_iter.take(self.k))
      progress.step += self.k
    else:
      progress.state, progress.sums = self.single(progress.state, progress.sums, next(train_iter))
      progress.step += 1
    progress.dispatches += 1


@dataclasses.dataclass
class RateWindow:
  """Images per second and the ETA since the last log line."""
  batch_size: int
  total_steps: int
  start_time: float
  start_step: int

  def measure(self, step: int) -> tuple[float, float]:
    """(img/s, seconds left) over the window ending at `step`; then a new window starts."""
    now = time.perf_counter()
    elapsed = max(now - self.start_time, 1e-9)
    steps_per_sec = (step - self.start_step) / elapsed
    self.start_time, self.start_step = now, step
    return steps_per_sec * self.batch_size, (self.total_steps - step) / max(steps_per_sec, 1e-9)


def log_train(session: TrainingSession, exp: build.Experiment, progress: Progress, rate: RateWindow) -> Metrics:
  """Fetches the window's metric sums, writes and prints the train record; new sums start."""
  host = _fetch(progress.sums)
  if int(host["first_nonfinite_step"]) >= 0:
    session.check_finite(host)
  n = max(int(host["steps"]), 1)
  images_per_sec, eta = rate.measure(progress.step)
  record = {"loss": float(host["loss"]) / n, "error": 100.0 * float(host["error"]) / n,
            "learning_rate": float(exp.schedule(jnp.asarray(progress.step - 1))),
            "images_per_sec": images_per_sec, "epoch": progress.step / exp.steps_per_epoch}
  session.writer.write(progress.step, record, "train")
  session.writer.print(report.train_line(progress.step, exp.total_steps, record, eta))
  progress.sums = step_lib.new_metrics(step_lib.zero_train_metrics, exp.mesh)
  return record


class Evaluations:
  """The loop's evaluations: dispatched without waiting for the devices, recorded when read.

  `start` dispatches the eval steps of the current weights (the devices run them before the
  train steps dispatched after); `finish` reads the sums, which are ready by the next log
  line, and writes and prints the result. A checkpoint carries the evaluation of its own
  weights (`of_current`), which is what ranks it for `keep_best_checkpoints`.
  """

  def __init__(self, session: TrainingSession, exp: build.Experiment):
    self.session, self.exp = session, exp
    self.eval_step = evaluation.pipeline_eval_step(exp.model, exp.mesh, exp.pipeline)
    self.pending: Optional[tuple[int, Metrics]] = None  # (step, sums on the devices)
    self.last: Metrics = {}

  def start(self, progress: Progress) -> None:
    self.finish(progress)
    state = progress.state
    sums = evaluation.start_evaluation(self.eval_step, state.params, state.batch_stats, self.exp.pipeline,
                                       self.exp.mesh)
    self.pending = (progress.step, sums)

  def finish(self, progress: Progress) -> None:
    """Reads, writes and prints the pending evaluation, if any."""
    if self.pending is None:
      return
    step, sums = self.pending
    self.pending = None
    result = evaluation.finish_evaluation(sums)
    if not math.isfinite(result["loss"]):
      self.session.check_finite(progress.sums)  # diverged weights: the NaN report, not their eval
    epoch = step / self.exp.steps_per_epoch
    self.session.writer.write(step, {**result, "epoch": epoch}, "eval")
    self.session.writer.print(report.eval_line(step, epoch, result, self.exp.config.data.eval_split))
    self.last = result

  def of_current(self, progress: Progress) -> Metrics:
    """The evaluation of `progress`'s weights (dispatched now unless it is pending)."""
    if self.pending is None or self.pending[0] != progress.step:
      self.start(progress)
    self.finish(progress)
    return self.last


def _report_finished(session: TrainingSession, exp: build.Experiment, progress: Progress) -> Dict[str, Any]:
  """A run asked to train past its end: its final evaluation (stored with the last checkpoint)."""
  step, total = progress.step, exp.total_steps
  result = session.checkpointer.eval_metrics(step) if step == total else {}
  if not {"error", "top5_error", "loss", "num_examples"} <= set(result):
    state = progress.state
    eval_step = evaluation.pipeline_eval_step(exp.model, exp.mesh, exp.pipeline)
    result = evaluation.evaluate_params(eval_step, state.params, state.batch_stats, exp.pipeline, exp.mesh)
  result["num_examples"] = int(result["num_examples"])
  session.writer.print(report.finished_line(step, total, result, exp.config.data.eval_split))
  return {"step": step, "train": session.last_record("train"), "eval": result, "preempted": False,
          "state": progress.state}


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
          mesh: Optional[Mesh] = None, config_spec: Optional[str] = None) -> Dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Returns the last train and eval metrics, the final step and whether the run
  stopped early on SIGTERM (`preempted`). `config_spec` (the `--config` value) names the
  config in the commands of the CPU-only notice (`cpu_notice`).
  """
  workdir = pathlib.Path(workdir).absolute()
  exp = build.experiment(config, mesh)  # validates the config: everything below trusts it
  # One writer per workdir, and a layout this version reads (before anything is written).
  workdir_lock = workdir_lib.lock(workdir) if jax.process_index() == 0 else None
  try:
    return _train(exp, workdir, config_spec)
  finally:
    if workdir_lock is not None:
      workdir_lock.release()


def _train(exp: build.Experiment, workdir: pathlib.Path, config_spec: Optional[str]) -> Dict[str, Any]:
  config, total = exp.config, exp.total_steps
  eval_every = exp.steps_per_epoch * int(config.eval_every_epochs)
  with TrainingSession(exp, workdir, config_spec) as session:
    train_iter = exp.pipeline.train_iterator()
    progress = session.restore_or_initialize(train_iter)
    if progress.step >= total:
      return _report_finished(session, exp, progress)
    steps, evals = TrainSteps(exp), Evaluations(session, exp)
    session.writer.print(report.start_line(
        config.model.name, models.count_params({"params": progress.state.params}), jax.device_count(),
        jax.process_count(), config.bn.mode, config.global_batch_size, exp.steps_per_epoch, progress.step, total))
    session.start_listening()
    notice = cpu_notice.CpuNotice(total, config.global_batch_size, session.writer.print, config_spec)
    rate = RateWindow(int(config.global_batch_size), total, time.perf_counter(), progress.step)
    last_train: Metrics = {}
    periods = (config.log_every_steps, config.checkpoint_every_steps, eval_every)

    while progress.step < total:
      steps.advance(progress, train_iter, until=next_due(progress.step, periods, total))
      notice.after_step(progress.step, progress.state)
      if itstime(progress.step, config.log_every_steps, total):
        evals.finish(progress)  # dispatched before these steps: ready, and its line comes first
        last_train = log_train(session, exp, progress, rate)
      if itstime(progress.step, eval_every, total):
        evals.start(progress)
      if itstime(progress.step, config.checkpoint_every_steps, total):
        # A checkpoint carries the evaluation of its own weights when one is due or kept-best ranks it.
        ranked = config.keep_best_checkpoints > 0 or progress.step == total
        session.save(progress, train_iter, evals.of_current(progress) if ranked else None)
      if progress.step < total and session.stop_requested(progress.dispatches):
        evals.finish(progress)
        session.save_and_stop(progress, train_iter)
        break
    evals.finish(progress)
    session.finish()
  return {"step": progress.step, "train": last_train, "eval": evals.last, "preempted": session.preempted,
          "state": progress.state}
