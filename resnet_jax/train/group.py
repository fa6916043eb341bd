"""A group of runs that one process trains in lockstep, all at the same step; a run trained
alone is a group of one.

A `Run` is one run's built experiment, its workdir's `TrainingSession` and its data
iterator. A `Group` dispatches its runs' steps and evaluations, hands each run its own
progress (`of_run`) and drops the runs that stop early (`check_runs`: a NaN/Inf loss or
gradient). How it dispatches is chosen once, when the group is made (`packing.stacks_runs`):

* `SeparatePrograms`: each run's own compiled step, dispatched in turn. A group of one
  (today's single run: the program is exactly the run's own) and every group on a CPU,
  where packing buys nothing (compute-bound): a run's arithmetic is then that of the run
  trained alone, whatever its group, so a packed resume in other groups is bit-exact.
* `StackedPrograms`: on an accelerator, one program for R runs whose states are stacked on
  a leading run axis (`step.build_packed_train_step`): the same kernels do R times the
  work. Each run's arithmetic equals its own run's to float rounding (vmapped kernels sum
  in another order), not bit for bit.

Nothing outside this module asks which it is.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.data.train_iterator import PackedTrainIterator
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.train import build
from resnet_jax.train import evaluation
from resnet_jax.train import packing
from resnet_jax.train import report
from resnet_jax.train import step as step_lib
from resnet_jax.train.session import NonFiniteLossError, Progress, TrainingSession

Metrics = Dict[str, Any]


def fetch(tree: Any) -> Any:
  """`tree` on the host, as numpy arrays."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


@dataclasses.dataclass
class RateWindow:
  """Images per second and the ETA since the last log line, over steps run after compilation.

  The window starts at the process's first line, right after its first steps (which
  compiled, after any restore): that line reports their time (`first_seconds`) instead.
  """
  batch_size: int
  total_steps: int
  start_time: float
  start_step: int
  first_seconds: Optional[float] = None  # the first steps with compilation, once measured
  clock: Callable[[], float] = time.perf_counter

  def measure(self, step: int) -> tuple[Optional[float], Optional[float]]:
    """(img/s, seconds left) over the window ending at `step`, (None, None) at the first line;
    then a new window starts."""
    now = self.clock()
    if self.first_seconds is None:
      self.first_seconds = now - self.start_time
      self.start_time, self.start_step = now, step
      return None, None
    elapsed = max(now - self.start_time, 1e-9)
    steps_per_sec = (step - self.start_step) / elapsed
    self.start_time, self.start_step = now, step
    return steps_per_sec * self.batch_size, (self.total_steps - step) / max(steps_per_sec, 1e-9)


@dataclasses.dataclass
class RunResult:
  """How one run's training call ended.

  `stopped`: "" when it reached its last step, else why it stopped before ("preempted" by
  SIGTERM or SIGHUP, "interrupted" by Ctrl-C, or "time limit"; it saved, and the same call
  again continues). `error`: the
  `NonFiniteLossError` of a run whose loss became NaN/Inf (the others of its group went on).
  """
  step: int
  workdir: str
  train: Metrics = dataclasses.field(default_factory=dict)
  eval: Metrics = dataclasses.field(default_factory=dict)
  stopped: str = ""
  error: Optional[BaseException] = None
  state: Any = None
  was_finished: bool = False  # it had reached its last step before this call, which reported it again

  @property
  def preempted(self) -> bool:
    """Stopped by a signal (SIGTERM, SIGHUP or Ctrl-C): the process is asked to end."""
    return self.stopped in (report.PREEMPTED, report.INTERRUPTED)

  @property
  def finished(self) -> bool:
    return not self.stopped and self.error is None


@dataclasses.dataclass(eq=False)  # a run is itself: compared by identity
class Run:
  """One run of a group: its built experiment, its workdir's session and its data iterator."""
  exp: build.Experiment
  session: TrainingSession
  train_iter: Any
  rate: Optional[RateWindow] = None
  last_train: Metrics = dataclasses.field(default_factory=dict)
  last_eval: Metrics = dataclasses.field(default_factory=dict)
  error: Optional[BaseException] = None  # why it stopped early (NaN/Inf), if it did

  def result(self, progress: Progress) -> RunResult:
    return RunResult(progress.step, str(self.session.workdir), self.last_train, self.last_eval,
                     self.session.stopped, self.error, progress.state)


def _steps(exp: build.Experiment, compile_k: Callable[[int], Callable]) -> Dict[int, Callable]:
  """The train steps of one dispatch: {1: single step, K: K steps} (`steps_per_dispatch` K)."""
  k = int(exp.config.steps_per_dispatch)
  return {1: compile_k(1), **({k: compile_k(k)} if k > 1 else {})}


class SeparatePrograms:
  """Each run's own compiled step, dispatched in turn (module docstring)."""

  def __init__(self, runs: List[Run], progresses: List[Progress]):
    self.states = [p.state for p in progresses]
    self.sums = [p.sums for p in progresses]
    programs: Dict[str, Dict[int, Callable]] = {}  # runs that differ only in their seed share one
    self.steps = []
    for run in runs:
      e = run.exp
      key = packing.program_of(e.config)
      if key not in programs:
        programs[key] = _steps(e, lambda k, e=e: step_lib.build_train_step(
            e.train_model, e.tx, e.config, e.mesh, e.pipeline.preprocess, e.num_classes, k))
      self.steps.append(programs[key])
    self.iterators = [run.train_iter for run in runs]
    exp = runs[0].exp
    self.eval_step = evaluation.pipeline_eval_step(exp.model, exp.mesh, exp.pipeline)
    self.zero_sums = lambda: step_lib.new_metrics(step_lib.zero_train_metrics, exp.mesh)

  def advance(self, k: int) -> None:
    for i, it in enumerate(self.iterators):
      batch = next(it) if k == 1 else it.take(k)
      self.states[i], self.sums[i] = self.steps[i][k](self.states[i], self.sums[i], batch)

  def of_run(self, index: int) -> tuple[Any, Metrics]:
    return self.states[index], self.sums[index]

  def in_flight(self) -> Any:
    return self.states

  def host_sums(self) -> List[Metrics]:
    return fetch(self.sums)

  def new_window(self) -> None:
    self.sums = [self.zero_sums() for _ in self.sums]

  def start_evaluation(self, pipe, mesh) -> Callable[[], List[Metrics]]:
    """Dispatches every run's eval steps (its weights and its EMA, if kept) over one pass of the
    split; returns the reader."""
    weights = [evaluation.weights_to_evaluate(s) for s in self.states]
    sums = [{prefix: evaluation.zero_sums(pipe, mesh) for prefix in w} for w in weights]
    for batch in pipe.eval_iterator():
      sums = [{prefix: self.eval_step(*w[prefix], total[prefix], batch) for prefix in w}
              for w, total in zip(weights, sums)]
    return lambda: [evaluation.merged(s) for s in fetch(sums)]

  def keep(self, indices: Sequence[int], runs: List[Run]) -> None:
    """Keeps only the runs at `indices` (the others stopped early)."""
    for name in ("states", "sums", "steps", "iterators"):
      setattr(self, name, [getattr(self, name)[i] for i in indices])


class StackedPrograms:
  """One program for all runs, their states stacked on a leading run axis (module docstring)."""

  def __init__(self, runs: List[Run], progresses: List[Progress]):
    self.state = packing.stack([p.state for p in progresses])
    self.sums = packing.stack([p.sums for p in progresses])
    self._compile(runs)

  def _compile(self, runs: List[Run]) -> None:
    exp = runs[0].exp
    txs, configs = [r.exp.tx for r in runs], [r.exp.config for r in runs]
    self.steps = _steps(exp, lambda k: step_lib.build_packed_train_step(
        exp.train_model, txs, exp.config, exp.mesh, exp.pipeline.preprocess, exp.num_classes, k,
        run_configs=configs))
    self.batches = PackedTrainIterator([r.train_iter for r in runs], exp.mesh, mesh_lib.DATA_AXIS)
    self.eval_step = evaluation.compiled(packing.over_runs(evaluation.eval_sums(
        exp.model, exp.pipeline.preprocess, evaluation.ten_crop_size(exp.pipeline)), (0, 0, 0, None)), exp.mesh)
    self.zero_sums = lambda: step_lib.new_metrics(
        lambda: packing.stack([step_lib.zero_train_metrics()] * len(runs)), exp.mesh)

  def advance(self, k: int) -> None:
    batch = next(self.batches) if k == 1 else self.batches.take(k)
    self.state, self.sums = self.steps[k](self.state, self.sums, batch)

  def of_run(self, index: int) -> tuple[Any, Metrics]:
    return jax.tree.map(lambda x: x[index], (self.state, self.sums))

  def in_flight(self) -> Any:
    return self.state

  def host_sums(self) -> List[Metrics]:
    host = fetch(self.sums)
    return [jax.tree.map(lambda x, i=i: x[i], host) for i in range(len(host["steps"]))]

  def new_window(self) -> None:
    self.sums = self.zero_sums()

  def start_evaluation(self, pipe, mesh) -> Callable[[], List[Metrics]]:
    runs, ten_crop = int(self.sums["steps"].shape[0]), evaluation.ten_crop_size(pipe) is not None
    weights = evaluation.weights_to_evaluate(self.state)
    zeros = lambda: step_lib.new_metrics(lambda: packing.stack([evaluation.zero_eval_metrics(ten_crop)] * runs), mesh)
    sums = {prefix: zeros() for prefix in weights}
    for batch in pipe.eval_iterator():
      sums = {prefix: self.eval_step(*weights[prefix], sums[prefix], batch) for prefix in weights}

    def read() -> List[Metrics]:
      host = evaluation.merged(fetch(sums))
      return [jax.tree.map(lambda x, i=i: x[i], host) for i in range(runs)]
    return read

  def keep(self, indices: Sequence[int], runs: List[Run]) -> None:
    chosen = jnp.asarray(list(indices))
    self.state, self.sums = jax.tree.map(lambda x: x[chosen], (self.state, self.sums))
    self._compile(runs)


class Group:
  """The runs one process trains in lockstep, all at the same step (module docstring)."""

  def __init__(self, runs: List[Run], progresses: List[Progress]):
    self.runs = list(runs)
    self.step, self.dispatches = progresses[0].step, 0
    exp = runs[0].exp
    stacked = len(runs) > 1 and packing.stacks_runs(exp.mesh.devices.flat[0].platform)
    self.programs = (StackedPrograms if stacked else SeparatePrograms)(self.runs, progresses)
    self.k = int(exp.config.steps_per_dispatch)

  @property
  def exp(self) -> build.Experiment:
    """The experiment of the group's first run (the others share its structure)."""
    return self.runs[0].exp

  def advance(self, until: int) -> None:
    """One dispatch: K steps if `until` is at least K steps away, else one."""
    k = self.k if self.k > 1 and until - self.step >= self.k else 1
    self.programs.advance(k)
    self.step += k
    self.dispatches += 1
    for run in self.runs:  # what a session records when it ends
      run.session.step = self.step

  def of_run(self, index: int) -> Progress:
    """Run `index`'s own progress."""
    state, sums = self.programs.of_run(index)
    return Progress(state, sums, self.step, self.dispatches)

  def in_flight(self) -> Any:
    """The states the devices are computing (to wait for when timing the steps)."""
    return self.programs.in_flight()

  def window_sums(self) -> List[Metrics]:
    """Each run's train metric sums of the current logging window, on the host."""
    return self.programs.host_sums()

  def new_window(self) -> None:
    """Zeroes every run's train metric sums: a new logging window starts."""
    if self.runs:
      self.programs.new_window()

  def start_evaluation(self) -> Callable[[], List[Metrics]]:
    """Dispatches the evaluation of every run's current weights; returns the function that
    reads each run's eval sums (when they are needed: the devices go on meanwhile)."""
    return self.programs.start_evaluation(self.exp.pipeline, self.exp.mesh)

  def drop(self, indices: Sequence[int]) -> None:
    """Removes the runs at `indices` (stopped early); the others go on."""
    keep = [i for i in range(len(self.runs)) if i not in set(indices)]
    self.runs = [self.runs[i] for i in keep]
    if self.runs:
      self.programs.keep(keep, self.runs)


def check_runs(group: Group, host_sums: Optional[List[Metrics]] = None) -> None:
  """Stops the runs whose loss or gradient became NaN/Inf: each gets the usual one-line report
  (its session ends with it) and leaves the group; the others go on."""
  if not group.runs:  # all stopped already
    return
  host_sums = group.window_sums() if host_sums is None else host_sums
  failed = [i for i, sums in enumerate(host_sums) if int(sums["first_nonfinite_step"]) >= 0]
  for i in failed:
    run = group.runs[i]
    try:
      run.session.check_finite(host_sums[i])
    except NonFiniteLossError as e:
      run.error = e
      if len(group.runs) > 1:  # the others go on: say it now (alone, the error ends the command)
        run.session.writer.print(f"stopped: {e}")
      run.session.end(e)
  if failed:
    group.drop(failed)
