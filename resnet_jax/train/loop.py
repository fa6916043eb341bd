"""The training loop: train steps, and at their times logging, evaluation and checkpoints.

`train(config, workdir)` reads like its schedule. After restoring the newest checkpoint
(or initialising), until the last step: train up to `steps_per_dispatch` steps (never past
the next periodic action), then ask, with `itstime`, whether it is time to log
(`log_train`), to evaluate (`Evaluations.start`: dispatched, read at the next log line, so
the devices go on training meanwhile), to record the gradient highway (`highway_log.py`, only
when `gradient_highway_every_steps` asks for it) or to save a checkpoint (`checkpoint_every_steps`
alone decides; an evaluation never forces a save), and whether SIGTERM/SIGINT or the time
limit asks to stop.

`train_packed(configs, workdirs)` runs the same schedule for R runs at once; `train` is the
same for one run. Either way the runs form a `Group` (`group.py`; a run alone is a group of
one), and the loop never asks how the group dispatches (one stacked program on an
accelerator, each run's own program on a CPU; `packing.py` says which runs can train
together). Each run keeps its own workdir, checkpoints, metrics and sessions log, exactly as
if it had trained alone; a run whose loss turns NaN/Inf stops (its workdir gets the usual
report) and the others go on. What a workdir holds across processes is
`TrainingSession`'s (`session.py`); evaluation and its scheduling are `evaluation.py`'s.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from resnet_jax import errors
from resnet_jax import models
from resnet_jax.runtime import cpu_notice
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.storage.workdir import Workdir
from resnet_jax.train import build
from resnet_jax.train import evaluation
from resnet_jax.train import packing
from resnet_jax.train import report
from resnet_jax.train.evaluation import Evaluations
from resnet_jax.train.group import Group, RateWindow, Run, RunResult, check_runs
from resnet_jax.train.highway_log import GradientHighwayLog
from resnet_jax.train.preemption import Preemption
from resnet_jax.train.session import NonFiniteLossError, Progress, TrainingSession  # noqa: F401  (re-exported)

Metrics = Dict[str, Any]


def itstime(step: int, every: int, total_steps: int) -> bool:
  """Whether an action done every `every` steps is due after `step` (always after the last)."""
  return step == total_steps or step % every == 0


def next_due(step: int, periods, total_steps: int) -> int:
  """The first step after `step` at which any of the periodic actions is due."""
  return min([total_steps] + [(step // every + 1) * every for every in periods])


def early_log_steps(first_step: int, every: int, total_steps: int) -> tuple[int, ...]:
  """The steps of a process's extra progress lines: 1, 2, 4, 8, … steps after `first_step`
  (where it started or resumed), before its first record is due (`itstime`).

  The first comes right after the step that compiled, the next within seconds on any
  machine, where the first record may be minutes away (100 steps of a CPU).
  """
  first_record = min(next_due(first_step, (every,), total_steps), total_steps)
  steps, k = [], 1
  while first_step + k < first_record:
    steps.append(first_step + k)
    k *= 2
  return tuple(steps)


def _window_records(group: Group) -> List[tuple[Run, Metrics, Optional[float]]]:
  """Each run's train record of the window's metric sums so far (no `images_per_sec` at a
  process's first line) and its ETA; runs whose loss became NaN/Inf leave the group first."""
  if not group.runs:
    return []
  host = group.window_sums()
  if any(int(sums["first_nonfinite_step"]) >= 0 for sums in host):
    check_runs(group, host)
    host = group.window_sums() if group.runs else []
  step, records = group.step, []
  for run, own in zip(group.runs, host):
    exp, n = run.exp, max(int(own["steps"]), 1)
    images_per_sec, eta = run.rate.measure(step)
    record = {"loss": float(own["loss"]) / n, "error": 100.0 * float(own["error"]) / n,
              "learning_rate": float(exp.schedule(jnp.asarray(step - 1))), "epoch": step / exp.steps_per_epoch}
    if images_per_sec is not None:
      record["images_per_sec"] = images_per_sec
    records.append((run, record, eta))
  return records


def _print_train_line(group: Group, run: Run, record: Metrics, eta: Optional[float]) -> None:
  run.session.writer.print(report.train_line(group.step, run.exp.total_steps, record, eta,
                                             run.rate.first_seconds))


def log_train(group: Group) -> None:
  """Fetches the window's metric sums, writes and prints each run's train record; new sums start."""
  for run, record, eta in _window_records(group):
    run.last_train = record
    run.session.writer.write(group.step, record, "train")
    _print_train_line(group, run, record, eta)
  group.new_window()


def log_progress(group: Group) -> None:
  """An early progress line (`early_log_steps`): printed, not recorded; the window goes on."""
  for run, record, eta in _window_records(group):
    _print_train_line(group, run, record, eta)


def save(group: Group, evals: Evaluations, ranked: bool) -> None:
  """Checkpoints every run; `ranked`: with the evaluation of its own weights."""
  check_runs(group)
  if ranked and group.runs:
    evals.of_current()
  for i, run in enumerate(group.runs):
    run.session.save(group.of_run(i), run.train_iter, run.last_eval if ranked else None)


def _report_finished(run: Run, progress: Progress) -> RunResult:
  """A run asked to train past its end: its final evaluation (stored with the last checkpoint)."""
  exp, session = run.exp, run.session
  step, total = progress.step, exp.total_steps
  result = session.checkpointer.eval_metrics(step) if step == total else {}
  if not {"error", "top5_error", "loss", "num_examples"} <= set(result):
    result = evaluation.finish_evaluation(Group([run], [progress]).start_evaluation()()[0])
  result["num_examples"] = int(result["num_examples"])
  session.writer.print(report.finished_line(step, total, result, exp.config.data.eval_split))
  run.last_train, run.last_eval = session.last_record("train"), result
  return dataclasses.replace(run.result(progress), was_finished=True)


def _time_is_up(deadline: Optional[float], log_step: bool) -> bool:
  """Whether the time limit has passed. With several processes, process 0's clock decides,
  at log steps only (the processes must stop at the same step; asking costs a collective)."""
  if deadline is None:
    return False
  if not mesh_lib.is_multiprocess():
    return time.monotonic() >= deadline
  return log_step and bool(multihost_utils.broadcast_one_to_all(np.asarray(time.monotonic() >= deadline)))


def _run_schedule(group: Group, preemption: Preemption, deadline: Optional[float],
                  config_spec: Optional[str]) -> None:
  """The loop proper: from the group's step to the end, or until asked to stop."""
  exp, config = group.runs[0].exp, group.runs[0].exp.config
  total = exp.total_steps
  eval_every = exp.steps_per_epoch * int(config.eval_every_epochs)
  highway = GradientHighwayLog(config.get("gradient_highway_every_steps", 0))
  periods = (config.log_every_steps, config.checkpoint_every_steps, eval_every) + ((highway.every,) if highway.every else ())
  evals = Evaluations(group, check_runs)
  start = group.step
  for run in group.runs:
    run.session.writer.print(report.start_line(
        config.model.name, models.count_params({"params": group.of_run(0).state.params}), jax.device_count(),
        jax.process_count(), config.bn.mode, config.global_batch_size, exp.steps_per_epoch, start, total))
  notice = cpu_notice.CpuNotice(total, config.global_batch_size * len(group.runs), group.runs[0].session.writer.print,
                                config_spec)
  for run in group.runs:
    run.rate = RateWindow(int(config.global_batch_size), total, time.perf_counter(), start)
  early = early_log_steps(start, config.log_every_steps, total)
  while group.runs and group.step < total:
    group.advance(until=min([next_due(group.step, periods, total)] + [s for s in early if s > group.step]))
    step = group.step
    notice.after_step(step, group.in_flight())
    if step in early:
      log_progress(group)
    if itstime(step, config.log_every_steps, total):
      evals.finish()  # dispatched before these steps: ready, and its line comes first
      log_train(group)
    if itstime(step, eval_every, total) and group.runs:
      evals.start()
    if highway.every and itstime(step, highway.every, total) and group.runs:
      highway(group)
    if itstime(step, config.checkpoint_every_steps, total):
      # A checkpoint carries the evaluation of its own weights when kept-best ranks it, and at the end.
      save(group, evals, ranked=config.keep_best_checkpoints > 0 or step == total)
    if step < total and group.runs:
      cause = (preemption.signal_name if preemption.reached(group.dispatches) else
               report.TIME_LIMIT if _time_is_up(deadline, itstime(step, config.log_every_steps, total)) else None)
      if cause is not None:
        for run in group.runs:  # at once: the save that follows waits for the steps in flight
          run.session.writer.print(report.stopping_line(cause, step))
        evals.finish()
        check_runs(group)
        for i, run in enumerate(group.runs):
          run.session.save_and_stop(group.of_run(i), run.train_iter, cause)
        return
  evals.finish()


def _start_runs(exps: Sequence[build.Experiment], workdirs: Sequence[Workdir], labels: Sequence[str],
                config_spec: Optional[str], stack: contextlib.ExitStack) -> tuple[List[Run], List[Progress]]:
  """Opens each run's session and restores (or initialises) it; the runs share one pipeline."""
  pipe = exps[0].pipeline
  iterators = pipe.train_iterators([exp.config.seed for exp in exps])
  runs, progresses = [], []
  for exp, workdir, label, train_iter in zip(exps, workdirs, labels, iterators):
    session = stack.enter_context(TrainingSession(exp, workdir, label, config_spec))
    progresses.append(session.restore_or_initialize(train_iter))
    runs.append(Run(exp, session, train_iter))
  return runs, progresses


def _by_step(runs: Sequence[Run], progresses: Sequence[Progress]) -> List[List[int]]:
  """The runs still to train, as one group per step they resume from (one joined later)."""
  groups: Dict[int, List[int]] = {}
  for i, (run, progress) in enumerate(zip(runs, progresses)):
    if progress.step < run.exp.total_steps:
      groups.setdefault(progress.step, []).append(i)
  return list(groups.values())


def _train_groups(runs: List[Run], progresses: List[Progress], deadline: Optional[float],
                  config_spec: Optional[str]) -> Dict[int, RunResult]:
  """Trains each group of `_by_step` in turn until one stops early; the results by run index."""
  results: Dict[int, RunResult] = {}
  groups = _by_step(runs, progresses)
  with Preemption() as preemption:
    for members in groups:
      group = Group([runs[i] for i in members], [progresses[i] for i in members])
      _run_schedule(group, preemption, deadline, config_spec)
      for i in members:  # a run that left the group early (NaN) ends at the step its session recorded
        own = group.runs.index(runs[i]) if runs[i] in group.runs else None
        results[i] = runs[i].result(group.of_run(own) if own is not None else
                                    dataclasses.replace(progresses[i], step=runs[i].session.step))
      stopped = next((r.session.stopped for r in group.runs if r.session.stopped), "")
      if stopped:  # the runs of later groups wait for the next command too
        for later in (i for g in groups for i in g if i not in results):
          runs[later].session.stopped = stopped
        break
  return results


def _train_runs(exps: Sequence[build.Experiment], workdirs: Sequence[Workdir], labels: Sequence[str],
                time_limit: Optional[float], config_spec: Optional[str]) -> List[RunResult]:
  """Trains `exps` in `workdirs`, each resumed from its newest checkpoint."""
  deadline = None if time_limit is None else time.monotonic() + float(time_limit)
  with _peer_failures(workdirs), contextlib.ExitStack() as stack:
    runs, progresses = _start_runs(exps, workdirs, labels, config_spec, stack)
    results = {i: _report_finished(run, progress) for i, (run, progress) in enumerate(zip(runs, progresses))
               if progress.step >= run.exp.total_steps}
    results.update(_train_groups(runs, progresses, deadline, config_spec))
  return [results.get(i) or runs[i].result(progresses[i]) for i in range(len(runs))]


@contextlib.contextmanager
def _peer_failures(workdirs: Sequence[Workdir]):
  """In a job of several processes, a computation that fails (another process died) ends the
  run in one line saying how to resume (`mesh.PeerLostError`)."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if not mesh_lib.is_multiprocess():
      raise
    saved = workdirs[0].saved_steps()
    raise mesh_lib.peer_lost(e, saved[-1] if saved else None) from None


@contextlib.contextmanager
def _locked(workdirs: Sequence[Workdir]):
  """One writer per workdir: every run's lock, taken before anything is written."""
  locks = []
  try:
    if jax.process_index() == 0:
      for workdir in workdirs:
        locks.append(workdir.lock())
    yield
  except BaseException:
    for lock in locks:  # a release that fails too (the storage is down) must not hide the error in flight
      try:
        lock.release()
      except errors.Error:
        pass
    raise
  for lock in locks:
    lock.release()


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike | Workdir,
          mesh: Optional[Mesh] = None, config_spec: Optional[str] = None,
          time_limit: Optional[float] = None) -> RunResult:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Returns the last train and eval metrics and the final step (`RunResult`), and whether the
  run stopped early on SIGTERM (`preempted`) or at `time_limit` seconds (`stopped`: "time
  limit"; it saved, and the same call again continues). `config_spec` (the `--config`
  value) names the config in the commands of the CPU-only notice (`cpu_notice`). Raises
  `NonFiniteLossError` if the loss or a gradient becomes NaN/Inf.
  """
  workdir = Workdir(workdir)
  workdir.check_reachable()  # a missing bucket fails before the data is opened
  exp = build.experiment(config, mesh)  # validates the config: everything below trusts it
  with _locked([workdir]):
    result = _train_runs([exp], [workdir], labels=[""], time_limit=time_limit, config_spec=config_spec)[0]
  if result.error is not None:
    raise result.error
  return result


def train_packed(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str | os.PathLike | Workdir],
                 mesh: Optional[Mesh] = None, time_limit: Optional[float] = None,
                 labels: Optional[Sequence[str]] = None) -> List[RunResult]:
  """Trains R runs together (`packing.py` says which configs can), each in its own workdir,
  resuming each from its newest checkpoint.

  Returns each run's result as `train` does; a run whose loss became NaN/Inf has its
  `NonFiniteLossError` as `error` (the other runs went on). A packed run's workdir is an
  ordinary one: it resumes alone, or packed with other runs.
  """
  if len(configs) != len(workdirs):
    raise errors.InputError(f"{len(configs)} configs for {len(workdirs)} workdirs")
  packing.check_packable(configs)
  workdirs = [Workdir(w) for w in workdirs]
  for workdir in workdirs:
    workdir.check_reachable()
  labels = list(labels) if labels is not None else [f"[{w.name}] " for w in workdirs]
  first = build.experiment(configs[0], mesh)
  exps = [first] + [build.experiment(c, first.mesh, first.pipeline) for c in configs[1:]]
  with _locked(workdirs):
    return _train_runs(exps, workdirs, labels=labels, time_limit=time_limit, config_spec=None)
