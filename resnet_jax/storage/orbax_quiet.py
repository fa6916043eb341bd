"""Orbax's noise, kept off the console: its failures reach `Checkpointer` and are reported in
one line there.

`install()` (called by every `Checkpointer`, once per process, never at import) adds two
logging filters and a `sys.unraisablehook`:

* checkpoints between evaluations have no metrics by design, and Orbax warns for each; a
  damaged step-metadata file, which restoring does not need, is an error line for each read;
* Orbax logs each failure of a background save or restore with its traceback, once per
  thread, and asyncio once more per write left unawaited (pages for one full disk);
* Python reports the leftovers of a failed Orbax read or write as "unraisable" tracebacks
  (TensorStore completing part of it after Orbax closed the event loop; Orbax coroutines
  collected with their error, or unawaited; an event loop that could not be created), at any
  time later, even at exit.
"""
from __future__ import annotations

import logging
import pathlib
import sys
import warnings
from typing import Any

_installed = False


# Orbax's messages about nothing that matters to a run, by their text:
_HARMLESS = (
    "did not provide metrics",  # checkpoints between evaluations have none, by design
    # A damaged step-metadata file (`_CHECKPOINT_METADATA`: timestamps, handler names) is read as
    # none; restoring does not need it, and the checksums check what a checkpoint holds.
    "Failed to json parse Metadata file",
    "Failed to read Metadata file",
)


class _HarmlessMessagesFilter(logging.Filter):
  """Drops Orbax's `_HARMLESS` messages (its other messages pass)."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(text in message for text in _HARMLESS)


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




def _is_loose_end_of_failed_orbax_io(unraisable: Any) -> bool:
  """The leftovers of an Orbax read or write that failed, which Python reports as
  "unraisable" tracebacks (on stderr, any time later, even at exit): TensorStore completing
  a part of it after Orbax closed the event loop ("Event loop is closed" in
  `call_soon_threadsafe`), Orbax coroutines of it collected with their error, and the event
  loop Orbax could not create for it when no file descriptor was left (`ulimit -n`), whose
  `__del__` fails."""
  error, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
  if code is not None:
    return _in_orbax(code.co_filename)
  if getattr(unraisable.object, "__qualname__", "") == "BaseEventLoop.__del__":
    return isinstance(error, AttributeError) and "_ssock" in str(error)
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


def install() -> None:
  """Installs the filters and the hook (module docstring), once."""
  global _installed
  if _installed:
    return
  _installed = True
  logging.getLogger("absl").addFilter(_HarmlessMessagesFilter())
  for name in ("absl", "asyncio"):
    logging.getLogger(name).addFilter(_OrbaxTracebackFilter())
  _quiet_loose_ends_of_failed_orbax_io()
  # Coroutines of a failed Orbax read or write, collected unawaited (resnet_jax itself has none).
  warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)
