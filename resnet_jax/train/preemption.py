"""SIGTERM, SIGINT and SIGHUP as a request to save and stop, polled by the training loop.

A preempted TPU VM, `scancel`, SLURM's time limit, Ctrl-C and a closed terminal (SIGHUP, an
SSH session that ends) all end a run the same way: a checkpoint at the next step, then a
clean exit that the same command resumes.
"""
from __future__ import annotations

import os
import signal
import threading

from jax.experimental import multihost_utils

from resnet_jax.runtime import mesh as mesh_lib


_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Preemption:
  """SIGTERM (a preempted TPU VM, `scancel`, SLURM's time limit), SIGINT (Ctrl-C) and SIGHUP (the
  terminal closed) as a flag the loop polls: the run saves a checkpoint at the next step and exits.
  After SIGHUP the terminal is gone, so writing to it would fail: the standard streams that
  were a terminal then write to /dev/null.

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
    self._terminals: list[int] = []  # the standard streams' descriptors that are a terminal

  def start(self) -> None:
    """Listens for SIGTERM, SIGINT and SIGHUP from now on (a single process, main thread)."""
    if threading.current_thread() is not threading.main_thread():
      return
    if self.multiprocess:  # a signal on one process must not make it save alone (saves are collective)
      return
    self._terminals = [fd for fd in (1, 2) if _is_terminal(fd)]  # stdout, stderr
    for sig in _SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    # No printing here: a signal can arrive inside a print (a reentrant write fails).
    if signum == signal.SIGINT and self.requested:  # the second Ctrl-C: stop now
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    if signum == signal.SIGHUP:
      _silence(self._terminals)
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


def _is_terminal(fd: int) -> bool:
  try:
    return os.isatty(fd)
  except (OSError, ValueError):
    return False


def _silence(descriptors: list[int]) -> None:
  """Points `descriptors` (a terminal that hung up: writing fails) at /dev/null."""
  if not descriptors:
    return
  null = os.open(os.devnull, os.O_WRONLY)
  for fd in descriptors:
    os.dup2(null, fd)
  os.close(null)
