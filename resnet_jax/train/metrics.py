"""Metric writers: JSONL, TensorBoard event files (tensorboardX, no TensorFlow) and the console.

Only process 0 writes; the other processes get a writer that does nothing.
"""
from __future__ import annotations

import json
import logging
import pathlib
import sys
import time
from typing import Dict, Mapping, Optional, TextIO

import jax

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events under `workdir/tensorboard`."""

  def __init__(self, workdir: str | pathlib.Path, enabled: Optional[bool] = None,
               console: Optional[TextIO] = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.console = console
    self._jsonl = None
    self._tb = None
    if self.enabled:
      workdir = pathlib.Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(workdir / METRICS_FILE, "a", encoding="utf-8")
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(str(workdir / "tensorboard"))
      except ImportError:  # optional dependency
        logging.warning("tensorboardX is not installed: no TensorBoard event files")

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
      print(line, file=self.console or sys.stdout, flush=True)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | pathlib.Path) -> list[Dict[str, float]]:
  """All records of `workdir/metrics.jsonl`, in order."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_duration(seconds: float) -> str:
  seconds = max(int(seconds), 0)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
