"""A run's records: metrics as JSON lines and TensorBoard events (tensorboardX, no TensorFlow),
the console lines, and one line per training process in `sessions.jsonl`.

Only process 0 writes; the other processes get a writer that does nothing. The JSON-lines
files go through the workdir's `files` backend (never through links; a line cut short by a
crash is skipped by the readers, and new records start on a fresh line). `Workdir` (which
names the files) opens the writers and reads the records.
"""
from __future__ import annotations

import logging
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time
from typing import Callable, Dict, List, Mapping, Optional, TextIO

import jax
from tensorboardX import summary as tb_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2

from resnet_jax.runtime import provenance
from resnet_jax.runtime.allocator import ACTIVE_ENV
from resnet_jax.storage import files as files_lib

METRICS_FILE = "metrics.jsonl"
SESSIONS_FILE = "sessions.jsonl"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_FLUSH_SECS = 120  # as tensorboardX's SummaryWriter


class TensorBoardWriter:
  """Scalars into a TensorBoard event file, written by the calling thread.

  tensorboardX's `SummaryWriter` writes from a thread of its own, whose errors (a full
  disk) end in tracebacks at exit that no caller can catch; this writes the same event
  file format synchronously (a few records per log line), so every failure reaches the
  caller as one `WorkdirWriteError`.

  Into an object-store directory (tensorboardX cannot append to an object), the events are
  written to a local file that each `flush` and `close` upload whole, where TensorBoard on
  `gs://` reads them.
  """

  def __init__(self, directory, files: files_lib.LocalFiles | files_lib.ObjectFiles):
    self.directory, self._files = directory, files
    # tensorboardX warns for each NaN/Inf scalar; a diverged run is reported once, by the loop.
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
    remote = isinstance(files, files_lib.ObjectFiles)
    self._local = pathlib.Path(tempfile.mkdtemp(prefix="resnet_jax_tb_")) if remote else None
    try:
      self._files.make_dirs(directory)
      self._events = EventsWriter(str((self._local or directory) / "events"))
    except OSError as e:
      raise files_lib.WorkdirWriteError(f"cannot write TensorBoard events in {directory}: {e.strerror}") from None
    self._last_flush = time.monotonic()

  def _guard(self, action: Callable[[], object]) -> None:
    try:
      action()
    except OSError as e:
      raise files_lib.WorkdirWriteError(
          f"cannot write TensorBoard events in {self.directory}: {e.strerror or e}") from None

  def add_scalars(self, step: int, scalars: Mapping[str, float], prefix: str) -> None:
    now = time.time()
    for k, v in scalars.items():
      event = event_pb2.Event(wall_time=now, step=int(step), summary=tb_summary.scalar(f"{prefix}/{k}", float(v)))
      self._guard(lambda event=event: self._events.write_event(event))
    if time.monotonic() - self._last_flush > TENSORBOARD_FLUSH_SECS:
      self.flush()

  def _upload(self) -> None:
    if self._local is not None:
      for file in self._local.iterdir():
        self._files.write_atomic(self.directory / file.name, file.read_bytes())

  def flush(self) -> None:
    self._guard(self._events.flush)
    self._upload()
    self._last_flush = time.monotonic()

  def close(self) -> None:
    self._guard(self._events.close)
    try:
      self._upload()
    finally:
      if self._local is not None:
        shutil.rmtree(self._local, ignore_errors=True)


def warn(line: str) -> None:
  """How the readers report lines a crash cut short, by default."""
  logging.getLogger("resnet_jax").warning(line)


class MetricWriter:
  """Writes scalars to `metrics.jsonl` and TensorBoard events under `tensorboard/` of a workdir.

  `console` receives the printed lines (stdout by default), including the report of a
  metrics file whose last line a crash cut short.
  """

  def __init__(self, workdir, files: files_lib.LocalFiles | files_lib.ObjectFiles, enabled: Optional[bool] = None,
               console: Optional[TextIO] = None, prefix: str = ""):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.console = console
    self.prefix = prefix  # e.g. "[seed3] ": which of several runs a console line is about
    self._jsonl = None  # a files_lib appender
    self._tb: Optional[TensorBoardWriter] = None
    if self.enabled:
      files.make_dirs(workdir)
      self._jsonl = files.open_jsonl(workdir / METRICS_FILE, log=self.print)
      try:
        self._tb = TensorBoardWriter(workdir / TENSORBOARD_DIR, files)
      except BaseException:
        self._jsonl.close()
        raise

  def write(self, step: int, scalars: Mapping[str, float], kind: str) -> None:
    """One record: `{"step", "kind" ("train" | "eval"), "time", **scalars}`."""
    if not self.enabled:
      return
    record = {"step": int(step), "kind": kind, "time": time.time(),
              **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.append(record)
    if self._tb is not None:
      self._tb.add_scalars(step, scalars, kind)

  def print(self, line: str) -> None:
    if self.enabled:
      try:
        print(self.prefix + line, file=self.console or sys.stdout, flush=True)
      except OSError:  # the console is gone (a closed pipe or terminal): the records still reach the workdir
        pass

  def flush(self) -> None:
    """Writes what is pending (on an object store, `metrics.jsonl` is rewritten at most every
    few seconds): called before each checkpoint, so that a resume finds every record up to it."""
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Closes both files (the JSONL file even when the TensorBoard one fails to flush)."""
    jsonl, tb, self._jsonl, self._tb = self._jsonl, self._tb, None, None
    try:
      if tb is not None:
        tb.close()
    finally:
      if jsonl is not None:
        jsonl.close()


class SessionLog:
  """One line per start and end of a training process in `workdir/sessions.jsonl`.

  A long run that is preempted and resumed many times keeps its history here: when
  each session started, from which step, on which host, with which resnet_jax version and commit,
  allocator and XLA flags, and where and how fast it ended.
  """

  def __init__(self, path, files: files_lib.LocalFiles | files_lib.ObjectFiles, enabled: bool = True):
    self.enabled, self.path, self._files = enabled, path, files
    self._start_time = time.time()
    self._start_step = 0
    self.started = False

  def _append(self, record: Dict) -> None:
    if self.enabled:
      self._files.make_dirs(self.path.parent)
      self._files.append_jsonl(self.path, record)

  def start(self, step: int, resumed_from: Optional[str] = None) -> None:
    self._start_time, self._start_step, self.started = time.time(), int(step), True
    self._append({"event": "start", "time": self._start_time, "step": int(step),
                  "resumed_from": resumed_from, "host": platform.node(), "pid": os.getpid(),
                  **provenance.code_version(), "device": provenance.device_description(),
                  "allocator": os.environ.get(ACTIVE_ENV, "system"),
                  "xla_flags": os.environ.get("XLA_FLAGS", "")})

  def end(self, step: int, images_per_step: int, reason: str) -> None:
    """`reason`: "finished", "preempted" or an error's one-line description."""
    if not self.started:
      return
    wall = time.time() - self._start_time
    steps = int(step) - self._start_step
    self._append({"event": "end", "time": time.time(), "step": int(step), "reason": reason,
                  "steps": steps, "wall_s": wall,
                  "images_per_sec": steps * images_per_step / wall if wall > 0 else 0.0})


def latest_per_step(records: list[Dict], kind: str, key: Optional[str] = None) -> Dict[int, Dict]:
  """Step -> record of that `kind` (and holding `key`, if given), in step order.

  A resumed run logs the steps after its checkpoint again; the later record wins.
  """
  out: Dict[int, Dict] = {}
  for rec in records:
    if rec.get("kind") == kind and (key is None or key in rec):
      out[int(rec["step"])] = rec
  return dict(sorted(out.items()))
