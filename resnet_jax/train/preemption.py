"""SIGTERM and SIGINT as a request to save and stop, polled by the training loop.

A preempted TPU VM, `scancel`, SLURM's time limit and Ctrl-C all end a run the same
way: a checkpoint at the next step, then a clean exit that the same command resumes.
"""
from __future__ import annotations

import signal
import threading

from jax.experimental import multihost_utils

from resnet_jax.runtime import mesh as mesh_lib


class Preemption:
  """SIGTERM (a preempted TPU VM, `scancel`, SLURM's time limit) and SIGINT (Ctrl-C) as a
  flag the loop polls: the run saves a checkpoint at the next step and exits.

  A second Ctrl-C stops at once (Python's KeyboardInterrupt), losing the steps since the
  last checkpoint. With several processes JAX's preemption service (started by
  `jax.distributed.initialize`) receives SIGTERM and agrees on a common step, so every
  process saves the same checkpoint.
  """

  def __init__(self):
    self.multiprocess = mesh_lib.is_multiprocess()
    self.requested = False
    self.signal_name = "SIGTERM"
    self._previous = {}

  def start(self) -> None:
    """Listens for SIGTERM and SIGINT from now on (a single process, main thread)."""
    if threading.current_thread() is not threading.main_thread():
      return
    if self.multiprocess:  # a signal on one process must not make it save alone (saves are collective)
      return
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    # No printing here: a signal can arrive inside a print (a reentrant write fails).
    if signum == signal.SIGINT and self.requested:  # the second Ctrl-C: stop now
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    self.requested = True
    self.signal_name = signal.Signals(signum).name

  def reached(self, counter: int) -> bool:
    if self.multiprocess:
      try:
        return multihost_utils.reached_preemption_sync_point(counter)
      except RuntimeError:  # preemption service disabled
        return False
    return self.requested

  def close(self) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}

  def __enter__(self) -> "Preemption":
    self.start()
    return self

  def __exit__(self, *exc) -> None:
    self.close()
