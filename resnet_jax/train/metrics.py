"""Metric writers: JSONL, TensorBoard event files (tensorboardX, no TensorFlow) and the console.

Only process 0 writes; the other processes get a writer that does nothing.
"""
from __future__ import annotations

import json
import os
import pathlib
import platform
import re
import sys
import time
from typing import Dict, Mapping, Optional, TextIO

import jax
from tensorboardX import SummaryWriter

from resnet_jax.runtime import provenance
from resnet_jax.runtime.allocator import ACTIVE_ENV

METRICS_FILE = "metrics.jsonl"
SESSIONS_FILE = "sessions.jsonl"


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events under `workdir/tensorboard`."""

  def __init__(self, workdir: str | pathlib.Path, enabled: Optional[bool] = None,
               console: Optional[TextIO] = None, prefix: str = ""):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.console = console
    self.prefix = prefix  # e.g. "[seed3] ": which of several runs a console line is about
    self._jsonl = None
    self._tb = None
    if self.enabled:
      workdir = pathlib.Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(workdir / METRICS_FILE, "a", encoding="utf-8")
      self._tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float], kind: str) -> None:
    """One record: `{"step", "kind" ("train" | "eval"), "time", **scalars}`."""
    if not self.enabled:
      return
    record = {"step": int(step), "kind": kind, "time": time.time(),
              **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f"{kind}/{k}", float(v), int(step))

  def print(self, line: str) -> None:
    if self.enabled:
      print(self.prefix + line, file=self.console or sys.stdout, flush=True)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


class SessionLog:
  """One line per start and end of a training process in `workdir/sessions.jsonl`.

  A long run that is preempted and resumed many times keeps its history here: when
  each session started, from which step, on which host, with which commit,
  allocator and XLA flags, and where and how fast it ended.
  """

  def __init__(self, workdir: str | pathlib.Path, enabled: Optional[bool] = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = pathlib.Path(workdir) / SESSIONS_FILE
    self._start_time = time.time()
    self._start_step = 0
    self.started = False

  def _append(self, record: Dict) -> None:
    if self.enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")

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


def read_sessions(workdir: str | pathlib.Path) -> list[Dict]:
  """All records of `workdir/sessions.jsonl`, in order."""
  path = pathlib.Path(workdir) / SESSIONS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_metrics(workdir: str | pathlib.Path) -> list[Dict[str, float]]:
  """All records of `workdir/metrics.jsonl`, in order."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_record(workdir: str | pathlib.Path, kind: str) -> Dict[str, float]:
  """The scalars of the last record of `kind` ("train" | "eval"), without step, kind and time."""
  records = [r for r in read_metrics(workdir) if r.get("kind") == kind]
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
