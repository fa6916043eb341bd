"""A run on a machine without an accelerator: one line, after its first steps, saying what to expect.

`make train` on a laptop starts the paper's 64k-iteration ResNet-20, about 5 hours on a quiet
2-core CPU; the line gives that duration from the speed measured on the machine at hand (the
one place a run's duration is stated), says when other work makes the machine busy, and gives
the commands of a one-minute (`:smoke`) and a ten-minute run.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Optional, Tuple

import jax

# Measure over the first steps after the first (which compiles): until both hold, or MEASURE_STEPS.
MEASURE_SECONDS = 3.0
MIN_MEASURED_STEPS = 2
MEASURE_STEPS = 20
SHORT_RUN_SECONDS = 600  # the suggested short run
# A run keeps every core busy itself: a load average beyond this many times the cores is other work.
BUSY_LOAD_PER_CORE = 1.5


def machine_load() -> Optional[Tuple[float, int]]:
  """(1-minute load average, cores this process may use), or None where the system has none."""
  try:
    return os.getloadavg()[0], len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return None


def _busy(load: Optional[Tuple[float, int]]) -> str:
  if load is None or load[0] <= BUSY_LOAD_PER_CORE * load[1]:
    return ""
  return f" (the machine is busy: load average {load[0]:.1f} on {load[1]} cores; it is faster on a quiet one)"


def describe_duration(seconds: float) -> str:
  """"about 8.0 hours", "about 25 minutes", "about 40 seconds", "less than 10 seconds"."""
  if seconds >= 5400:
    return f"about {seconds / 3600:.1f} hours"
  if seconds >= 90:
    return f"about {round(seconds / 60)} minutes"
  return f"about {round(seconds)} seconds" if seconds >= 10 else "less than 10 seconds"


def _round_down(n: float) -> int:
  """Two significant digits, rounded down: 1,347 -> 1,300."""
  if n < 10:
    return max(int(n), 1)
  unit = 10 ** (int(math.log10(n)) - 1)
  return int(n // unit * unit)


def notice_text(remaining_steps: int, batch_size: int, images_per_sec: float,
                config_spec: Optional[str] = None, load: Optional[Tuple[float, int]] = None) -> str:
  """The line printed on a CPU-only machine; `config_spec` is the `--config` value, if known;
  `load` the machine's (`machine_load`), when measured."""
  name = (config_spec or "NAME").split(":", 1)[0]
  seconds = remaining_steps * batch_size / max(images_per_sec, 1e-9)
  line = (f"no accelerator: JAX runs on the CPU, where the remaining {remaining_steps:,} steps of "
          f"{batch_size} take {describe_duration(seconds)} at {images_per_sec:,.0f} img/s{_busy(load)}")
  if seconds <= 2 * SHORT_RUN_SECONDS:
    return line
  short_steps = _round_down(SHORT_RUN_SECONDS * images_per_sec / batch_size)
  return (f"{line}; a one-minute run: resnet-jax train --config {name}:smoke --workdir /tmp/smoke; "
          f"a ten-minute one: resnet-jax train --config {name} --config.num_steps={short_steps} "
          "--workdir DIR")


class CpuNotice:
  """Prints `notice_text` once, from the speed of the first steps, when JAX has no accelerator.

  `after_step(step, state)` is called by the loop after each dispatch; it waits for the
  state only during the few measured steps (and not at all on an accelerator).
  """

  def __init__(self, total_steps: int, batch_size: int, print_fn: Callable[[str], None],
               config_spec: Optional[str] = None, clock: Callable[[], float] = time.perf_counter):
    self.active = jax.default_backend() == "cpu" and jax.process_index() == 0
    self._total, self._batch, self._print = int(total_steps), int(batch_size), print_fn
    self._spec, self._clock = config_spec, clock
    self._start: Optional[tuple] = None

  def after_step(self, step: int, state) -> None:
    if not self.active:
      return
    if step >= self._total:  # the run is over before the speed is known
      self.active = False
      return
    jax.block_until_ready(state)
    now = self._clock()
    if self._start is None:  # the first step compiled: measure from its end
      self._start = (step, now)
      return
    steps, seconds = step - self._start[0], now - self._start[1]
    if steps >= MEASURE_STEPS or (steps >= MIN_MEASURED_STEPS and seconds >= MEASURE_SECONDS):
      rate = steps * self._batch / max(seconds, 1e-9)
      self._print(notice_text(self._total - step, self._batch, rate, self._spec, machine_load()))
      self.active = False
