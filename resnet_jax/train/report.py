"""The training loop's console lines: what a run is, how it goes, how it ended.

One function per line, so the loop states *when* to report and this module *what*;
`metrics.jsonl` and TensorBoard get the same numbers as data (`metrics.MetricWriter`).
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

from resnet_jax import errors


def start_line(name: str, num_params: int, num_devices: int, num_processes: int, bn_mode: str,
               batch_size: int, steps_per_epoch: int, step: int, total_steps: int) -> str:
  return (f"{name}: {num_params:,} params, {num_devices} devices in {num_processes} processes, bn={bn_mode}, "
          f"batch {batch_size}, {steps_per_epoch} steps/epoch, steps {step}->{total_steps}")


def train_line(step: int, total_steps: int, record: Mapping[str, float], eta_seconds: Optional[float],
               first_seconds: Optional[float] = None) -> str:
  """A `kind="train"` record (loss, error, learning_rate, images_per_sec, epoch) and the ETA.

  A process's first line has no speed yet (its first steps compiled): it gives their time.
  """
  if "images_per_sec" in record and eta_seconds is not None:
    speed = f"{record['images_per_sec']:.0f} img/s | ETA {format_duration(eta_seconds)}"
  else:
    speed = f"compiled, first step in {first_seconds or 0.0:.1f} s"
  return (f"step {step}/{total_steps} | epoch {record['epoch']:.2f} | loss {record['loss']:.4f} | "
          f"train error {record['error']:.2f}% | lr {record['learning_rate']:.4g} | {speed}")


def eval_line(step: int, epoch: float, result: Mapping[str, Any], split: str, label: str = "eval") -> str:
  """An evaluation's line (`label` "eval (EMA)" for the moving average's); with 10-crop testing
  its error beside the center crop's."""
  ten = (f"10-crop error {result['ten_crop_error']:.2f}% | top-5 {result['ten_crop_top5_error']:.2f}% | "
         if "ten_crop_error" in result else "")
  return (f"{label} step {step} | epoch {epoch:.2f} | error {result['error']:.2f}% | "
          f"top-5 {result['top5_error']:.2f}% | {ten}loss {result['loss']:.4f} | "
          f"{result['num_examples']} images of {split}")


def finished_line(step: int, total_steps: int, result: Dict[str, Any], split: str) -> str:
  """A finished run asked to train again: its final evaluation."""
  return (f"already finished at step {step} of {total_steps}: eval error {result['error']:.2f}% | "
          f"top-5 {result['top5_error']:.2f}% | {result['num_examples']} images of {split}")


TIME_LIMIT = "time limit"
PREEMPTED, INTERRUPTED = "preempted", "interrupted"
# A stop's cause (a signal's name, or TIME_LIMIT) -> (how `sessions.jsonl` and `RunResult.stopped`
# record it, how the console says it): Ctrl-C is the user's, SIGTERM the cluster's, SIGHUP a
# closed terminal (an SSH session), which saves like SIGTERM.
_CAUSES = {"SIGINT": (INTERRUPTED, "interrupted (Ctrl-C)"), "SIGTERM": (PREEMPTED, "preempted"),
           "SIGHUP": (PREEMPTED, "hung up (SIGHUP: the terminal closed)"),
           TIME_LIMIT: (TIME_LIMIT, "time limit reached")}


def stop_reason(cause: str) -> str:
  """What a stop by `cause` is recorded as: "interrupted", "preempted" or "time limit"."""
  return _CAUSES.get(cause, _CAUSES["SIGTERM"])[0]


def stopping_line(cause: str, step: int) -> str:
  """Said as soon as the loop sees the request, before the save (which takes seconds)."""
  return f"{_CAUSES.get(cause, _CAUSES['SIGTERM'])[1]}: stopping at step {step}, saving a checkpoint..."


def stopped_line(cause: str, step: int, directory: Any) -> str:
  """A run stopped before its end: `cause` is the signal's name ("SIGTERM", "SIGINT") or `TIME_LIMIT`."""
  what = _CAUSES.get(cause, _CAUSES["SIGTERM"])[1]
  return f"{what}: saved step {step} to {directory}; run the same command again to resume"


def diverged_advice(workdir: Any, checkpoint_dir: Any, good_step: Any, config_spec: Any = None) -> str:
  """What to do after a NaN/Inf: the command that continues with a lower learning rate.

  A workdir with checkpoints resumes only with its recipe, so a lower rate starts a new
  run from the last good checkpoint's weights (`init_from`); without a checkpoint the same
  workdir takes the new rate.
  """
  config = f"--config {config_spec}" if config_spec else "--config CONFIG"
  if good_step is None:
    return (f"No checkpoint was saved before it: run again in this workdir with a lower rate, "
            f"`resnet-jax train {config} --workdir {workdir} --config.optimizer.learning_rate=LOWER` (or add "
            "--config.schedule.warmup_length=N), with the run's other --config flags")
  return (f"last good checkpoint: {checkpoint_dir}/{good_step} (step {good_step}). This workdir resumes only "
          "with its recipe; to go on with a lower rate, start a new run from that checkpoint's weights: "
          f"`resnet-jax train {config} --workdir NEW_DIR --config.init_from={workdir}:{good_step} "
          "--config.optimizer.learning_rate=LOWER` (or add --config.schedule.warmup_length=N), with the run's "
          "other --config flags")


_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(value: float | int | str) -> float:
  """Seconds from a number (seconds) or text such as "90s", "10m", "1h30m", "2.5h"."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    seconds = float(value)
  else:
    text = str(value).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms]?)", text)
    if not text or "".join(n + u for n, u in parts) != text or (len(parts) > 1 and not all(u for _, u in parts)):
      raise errors.InputError(f"time limit {value!r} is not a duration: a number of seconds, or e.g. 90s, 10m, 1h30m")
    seconds = sum(float(n) * _DURATION_UNITS[u or "s"] for n, u in parts)
  if seconds < 0:
    raise errors.InputError(f"time limit {value!r} must not be negative")
  return seconds


def format_duration(seconds: float) -> str:
  seconds = max(int(seconds), 0)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
