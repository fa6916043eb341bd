"""Metric writers: JSONL, TensorBoard event files (tensorboardX, no TensorFlow) and the console.

Only process 0 writes; the other processes get a writer that does nothing. The JSON-lines
files go through `workdir_io` (never through links; a line cut short by a crash is
skipped by the readers, and new records start on a fresh line).
"""
from __future__ import annotations

import logging
import os
import pathlib
import platform
import re
import shutil
import sys
import tempfile
import time
from typing import Callable, Dict, Mapping, Optional, TextIO

import jax
from tensorboardX import summary as tb_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2

from resnet_jax.runtime import provenance
from resnet_jax.runtime.allocator import ACTIVE_ENV
from resnet_jax.train import workdir_io

METRICS_FILE = "metrics.jsonl"
SESSIONS_FILE = "sessions.jsonl"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_FLUSH_SECS = 120  # as tensorboardX's SummaryWriter
# tensorboardX warns for each NaN/Inf scalar; a diverged run is reported once, by the loop.
logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)


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

  def __init__(self, directory):
    self.directory = directory
    self._local = pathlib.Path(tempfile.mkdtemp(prefix="resnet_jax_tb_")) if workdir_io.is_url(directory) else None
    try:
      workdir_io.make_dirs(directory)
      self._events = EventsWriter(str((self._local or directory) / "events"))
    except OSError as e:
      raise workdir_io.WorkdirWriteError(f"cannot write TensorBoard events in {directory}: {e.strerror}") from None
    self._last_flush = time.monotonic()

  def _guard(self, action: Callable[[], object]) -> None:
    try:
      action()
    except OSError as e:
      raise workdir_io.WorkdirWriteError(
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
        workdir_io.write_atomic(self.directory / file.name, file.read_bytes())

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


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events under `workdir/tensorboard`.

  `console` receives the printed lines (stdout by default), including the report of a
  metrics file whose last line a crash cut short.
  """

  def __init__(self, workdir: str | pathlib.Path, enabled: Optional[bool] = None,
               console: Optional[TextIO] = None, prefix: str = ""):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.console = console
    self.prefix = prefix  # e.g. "[seed3] ": which of several runs a console line is about
    self._jsonl = None  # a workdir_io appender
    self._tb: Optional[TensorBoardWriter] = None
    if self.enabled:
      workdir = workdir_io.as_path(workdir)
      workdir_io.make_dirs(workdir)
      self._jsonl = workdir_io.open_jsonl(workdir / METRICS_FILE, log=self.print)
      try:
        self._tb = TensorBoardWriter(workdir / TENSORBOARD_DIR)
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
      print(self.prefix + line, file=self.console or sys.stdout, flush=True)

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
  each session started, from which step, on which host, with which commit,
  allocator and XLA flags, and where and how fast it ended.
  """

  def __init__(self, workdir: str | pathlib.Path, enabled: Optional[bool] = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = workdir_io.as_path(workdir) / SESSIONS_FILE
    self._start_time = time.time()
    self._start_step = 0
    self.started = False

  def _append(self, record: Dict) -> None:
    if self.enabled:
      workdir_io.make_dirs(self.path.parent)
      workdir_io.append_jsonl(self.path, record)

  def start(self, step: int, resumed_from: Optional[str] = None) -> None:
    self._start_time, self._start_step, self.started = time.time(), int(step), True
    self._append({"event": "start", "time": self._start_time, "step": int(step),
                  "resumed_from": resumed_from, "host": platform.node(), "pid": os.getpid(),
                  "commit": provenance.git_commit(), "device": provenance.device_description(),
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


def read_sessions(workdir: str | pathlib.Path, log: Optional[Callable[[str], None]] = logging.warning
                  ) -> list[Dict]:
  """All records of `workdir/sessions.jsonl`, in order; lines cut short by a crash are
  skipped (and reported through `log`)."""
  return workdir_io.read_jsonl(workdir_io.as_path(workdir) / SESSIONS_FILE, log)


def read_metrics(workdir: str | pathlib.Path, log: Optional[Callable[[str], None]] = logging.warning
                 ) -> list[Dict[str, float]]:
  """All records of `workdir/metrics.jsonl`, in order; lines cut short by a crash are
  skipped (and reported through `log`)."""
  return workdir_io.read_jsonl(workdir_io.as_path(workdir) / METRICS_FILE, log)


def last_record(workdir: str | pathlib.Path, kind: str, log: Optional[Callable[[str], None]] = logging.warning
                ) -> Dict[str, float]:
  """The scalars of the last record of `kind` ("train" | "eval"), without step, kind and time."""
  records = [r for r in read_metrics(workdir, log) if r.get("kind") == kind]
  return {k: v for k, v in records[-1].items() if k not in ("step", "kind", "time")} if records else {}


def latest_per_step(records: list[Dict], kind: str, key: Optional[str] = None) -> Dict[int, Dict]:
  """Step -> record of that `kind` (and holding `key`, if given), in step order.

  A resumed run logs the steps after its checkpoint again; the later record wins.
  """
  out: Dict[int, Dict] = {}
  for rec in records:
    if rec.get("kind") == kind and (key is None or key in rec):
      out[int(rec["step"])] = rec
  return dict(sorted(out.items()))


_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(value: float | int | str) -> float:
  """Seconds from a number (seconds) or text such as "90s", "10m", "1h30m", "2.5h"."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    seconds = float(value)
  else:
    text = str(value).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms]?)", text)
    if not text or "".join(n + u for n, u in parts) != text or (len(parts) > 1 and not all(u for _, u in parts)):
      raise ValueError(f"time limit {value!r} is not a duration: a number of seconds, or e.g. 90s, 10m, 1h30m")
    seconds = sum(float(n) * _DURATION_UNITS[u or "s"] for n, u in parts)
  if seconds < 0:
    raise ValueError(f"time limit {value!r} must not be negative")
  return seconds


def format_duration(seconds: float) -> str:
  seconds = max(int(seconds), 0)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
