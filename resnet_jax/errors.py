"""The one base of every error resnet_jax raises on a documented fault.

Each carries a one-line message that says what is wrong and what would be valid (or what to
do), and the exit code a command ends with: `InputError` (2) for input the user can correct
(a config value, a command-line argument, a network or dataset name), `Error` (1) for a
fault of the run or of its storage (a full disk, an unreadable checkpoint, a diverged loss).
`resnet_jax.cli` catches `Error` in one place for every command and prints its message.

The classes keep a built-in base where callers catch one (`ConfigError` is a `ValueError`,
`CheckpointWriteError` an `OSError`), so `except ValueError` still works.
"""
from __future__ import annotations

import os
import sys


class Error(Exception):
  """A documented fault: the message is one line; a command exits with `exit_code`.

  `exit_at_once`: the process must end without running its exit handlers, which would hang
  (JAX's shutdown waits for a process of the job that died, then aborts with pages of logs).
  """
  exit_code = 1
  exit_at_once = False


def end_if_it_must(error: Error) -> None:
  """Ends the process now, with `error`'s exit code, when `error.exit_at_once` says so (after
  the caller printed its message)."""
  if error.exit_at_once:
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except (OSError, ValueError):
        pass
    os._exit(error.exit_code)  # pylint: disable=protected-access


class InputError(Error, ValueError):
  """Input the user can correct (a value, a name, an argument): a command exits 2."""
  exit_code = 2


def one_line(error: BaseException, limit: int = 240) -> str:
  """`Type: first line of the message`, shortened: how a library's error (Orbax, TensorStore,
  gcsfs: pages long) is named inside one of ours."""
  text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


class Stopped(Error):
  """Not a fault: the work in progress saved and stopped on a signal (SIGTERM, SIGHUP, Ctrl-C)
  and the same command again continues it; raised where a caller would otherwise go on (a
  study's next run), and ends a command like `train` after a preemption: exit 0."""
  exit_code = 0


class MissingError(Error, FileNotFoundError):
  """A file, checkpoint or dataset that is not there (the message says how to make it): exits 2."""
  exit_code = 2
