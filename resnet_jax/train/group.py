"""A group of runs trained by one program, all at the same step.

A `Run` is one run's built experiment, its workdir's `TrainingSession` and its data
iterator. A `Group` holds the runs one program trains: unpacked, one run and its state as
it is; packed (`packing.py`), R runs whose states are stacked on a leading run axis. The
group compiles the train steps (1 and K per dispatch) and the eval step for its runs,
dispatches them, hands each run its own slice (`of_run`) and drops the runs that stop early
(`check_runs`: a NaN/Inf loss or gradient), recompiling for the others.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.data.train_iterator import PackedTrainIterator
from resnet_jax.train import build
from resnet_jax.train import evaluation
from resnet_jax.train import mesh as mesh_lib
from resnet_jax.train.packing import stack
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

  def result(self, progress: Progress) -> Dict[str, Any]:
    out = {"step": progress.step, "train": self.last_train, "eval": self.last_eval,
           "preempted": self.session.stopped == "preempted", "stopped": self.session.stopped,
           "state": progress.state, "workdir": str(self.session.workdir)}
    if self.error is not None:
      out["error"] = self.error
    return out


class Group:
  """The runs one program trains, all at the same step.

  Unpacked (one run trained alone) the state is the run's `TrainState`; packed, every leaf
  has a leading axis of R, one run per index (`step_lib.make_train_step(runs=R)`).
  """

  def __init__(self, runs: List[Run], progresses: List[Progress], packed: bool):
    self.packed = packed
    self.runs = runs
    if packed:
      self.progress = Progress(stack([p.state for p in progresses]), stack([p.sums for p in progresses]),
                               progresses[0].step)
    else:
      self.progress = progresses[0]
    self._compile()

  def _compile(self) -> None:
    """The train steps (1 and K per dispatch), eval step and batch source of the current runs."""
    exp = self.runs[0].exp
    pipe, config = exp.pipeline, exp.config
    runs = len(self.runs) if self.packed else None
    tx = [r.exp.tx for r in self.runs] if self.packed else exp.tx
    self.k = int(config.steps_per_dispatch)
    build_step = lambda k: step_lib.make_train_step(exp.model, tx, config, exp.mesh, pipe.preprocess,
                                                    pipe.num_classes, steps_per_call=k, runs=runs)
    self.single = build_step(1)
    self.multi = build_step(self.k) if self.k > 1 else None
    self.eval_step = evaluation.pipeline_eval_step(exp.model, exp.mesh, pipe, runs=runs)
    self.batches = (PackedTrainIterator([r.train_iter for r in self.runs], exp.mesh, mesh_lib.DATA_AXIS)
                    if self.packed else self.runs[0].train_iter)

  def advance(self, until: int) -> None:
    """One dispatch: K steps if `until` is at least K steps away, else one."""
    p = self.progress
    if self.multi is not None and until - p.step >= self.k:
      p.state, p.sums = self.multi(p.state, p.sums, self.batches.take(self.k))
      p.step += self.k
    else:
      p.state, p.sums = self.single(p.state, p.sums, next(self.batches))
      p.step += 1
    p.dispatches += 1

  def of_run(self, index: int) -> Progress:
    """Run `index`'s own progress (its slice of the stacked state when packed)."""
    p = self.progress
    if not self.packed:
      return p
    take = lambda tree: jax.tree.map(lambda x: x[index], tree)
    return Progress(take(p.state), take(p.sums), p.step, p.dispatches)

  def drop(self, indices: Sequence[int]) -> None:
    """Removes the runs at `indices` (stopped early) and recompiles for the others."""
    keep = [i for i in range(len(self.runs)) if i not in set(indices)]
    self.runs = [self.runs[i] for i in keep]
    if self.packed and self.runs:
      chosen = jnp.asarray(keep)
      p = self.progress
      p.state, p.sums = jax.tree.map(lambda x: x[chosen], (p.state, p.sums))
      self._compile()


def check_runs(group: Group, host_sums: Optional[Metrics] = None) -> None:
  """Stops the runs whose loss or gradient became NaN/Inf: each gets the usual one-line report
  (its session ends with it) and leaves the group; the others go on."""
  if not group.runs:  # all stopped already
    return
  sums = fetch(group.progress.sums["first_nonfinite_step"]) if host_sums is None else host_sums[
      "first_nonfinite_step"]
  bad = np.atleast_1d(np.asarray(sums))
  failed = [i for i, first in enumerate(bad) if int(first) >= 0]
  for i in failed:
    run = group.runs[i]
    try:
      run.session.check_finite({"first_nonfinite_step": bad[i]})
    except NonFiniteLossError as e:
      run.error = e
      if group.packed:  # alone, the error itself ends the command with this line
        run.session.writer.print(f"stopped: {e}")
      run.session.end(e)
  if failed:
    group.drop(failed)


