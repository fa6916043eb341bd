"""A study's figure, drawn so that it cannot mislead.

Training loss and eval error against iteration, one colour per variant: every seed as a thin
line and their mean as a thick one (a mean alone hides how far seeds spread; two seeds'
means can look like a clear win at chance level). The eval axis names the split and its
size as the runs evaluated it (`test[:200]`, 200 images is not "test error"); chance level
is drawn where the errors come near it; a budget shorter than the config's is said in the
title.
"""
from __future__ import annotations

import io
import pathlib
from typing import Any, Dict, List, Optional

import matplotlib

import resnet_jax.data as rjd
from resnet_jax.storage import files as files_lib
from resnet_jax.storage import records

NEAR_CHANCE = 15.0  # percentage points: closer than this to chance, chance is drawn


def _curves(runs: List[Any], kind: str, key: str) -> List[Dict[int, float]]:
  """Step -> value of `key` in each run's records of `kind` (the later record of a step wins)."""
  return [{s: r[key] for s, r in records.latest_per_step(run.curves(), kind, key).items()} for run in runs]


def _mean_curve(curves: List[Dict[int, float]]) -> tuple[list, list]:
  steps = sorted({s for c in curves for s in c})
  return steps, [sum(c[s] for c in curves if s in c) / sum(s in c for c in curves) for s in steps]


def _draw(ax, runs: List[Any], kind: str, key: str, label: str, color) -> List[float]:
  """Each run thin, the mean thick; returns every value drawn."""
  curves = [c for c in _curves(runs, kind, key) if c]
  for c in curves:
    steps = sorted(c)
    ax.plot(steps, [c[s] for s in steps], color=color, alpha=0.35, linewidth=0.8)
  if curves:
    steps, mean = _mean_curve(curves)
    ax.plot(steps, mean, color=color, linewidth=2.2, label=label, marker="." if len(steps) < 30 else None)
  return [v for c in curves for v in c.values()]


def _eval_split(study) -> str:
  """"error on test[:200] (200 images)": the split and its size, as the runs evaluated it."""
  run = study.runs[0]
  split = study.config_for(run).data.eval_split
  sizes = {int(r["num_examples"]) for run in study.runs for r in run.curves()
           if r.get("kind") == "eval" and "num_examples" in r}
  size = f", {sizes.pop():,} images" if len(sizes) == 1 else ""
  what = {"error": "error", "top5_error": "top-5 error", "ten_crop_error": "10-crop error"}.get(study.metric,
                                                                                                study.metric)
  return f"{what} on {split}{size}"


def _chance(study) -> Optional[float]:
  """The error of guessing (percent) for the study's metric, when it has one."""
  classes = rjd.dataset_info(study.config_for(study.runs[0]).data.name).num_classes
  guesses = {"error": 1, "ten_crop_error": 1, "top5_error": 5}.get(study.metric)
  return None if guesses is None else 100.0 * (1 - min(guesses, classes) / classes)


def _length(config) -> tuple[float, str]:
  return (config.num_steps, "steps") if config.num_steps > 0 else (config.num_epochs, "epochs")


def budget_note(study) -> str:
  """"reduced budget: 2,000 of 64,000 steps" when the runs train less than their configs."""
  notes = set()
  for variant in study.variants:
    (ran, unit), (full, full_unit) = _length(study.configs[variant]), _length(study.base_configs[variant])
    if unit == full_unit and ran < full:
      notes.add(f"{ran:,.6g} of {full:,.6g} {unit}")
  return f"reduced budget: {'; '.join(sorted(notes))}" if notes else ""


def _save(fig, path) -> pathlib.Path:
  path = files_lib.as_path(path)
  files = files_lib.files_for(path)
  files.make_dirs(path.parent)
  image = io.BytesIO()
  fig.savefig(image, format="png", dpi=120)
  files.write_atomic(path, image.getvalue())
  return path


def plot(study, path, title: Optional[str] = None) -> pathlib.Path:
  """Writes the figure of `study` (a `study.Study`) to `path` (PNG; local or gs://)."""
  matplotlib.use("Agg")  # files only; no display needed
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  (after choosing the backend)
  fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(12, 4.8))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  errors_drawn = []
  for i, variant in enumerate(study.variants):
    runs = [r for r in study.runs if r.variant == variant]
    done = sum(r.finished for r in runs)
    label = f"{variant} ({len(runs)} seeds)" if done == len(runs) else f"{variant} ({done} of {len(runs)} finished)"
    color = colors[i % len(colors)]
    _draw(ax_loss, runs, "train", "loss", label, color)
    errors_drawn += _draw(ax_err, runs, "eval", study.metric, label, color)
  split = _eval_split(study)
  chance = _chance(study)
  if chance is not None and errors_drawn and max(errors_drawn) > chance - NEAR_CHANCE:
    ax_err.axhline(chance, color="black", linestyle=":", linewidth=1, label=f"chance ({chance:.0f} %)")
  ax_loss.set(xlabel="iteration", ylabel="training loss", title="training loss (thin: each seed; thick: mean)")
  ax_err.set(xlabel="iteration", ylabel=f"{split} (%)", title=split)
  for ax in (ax_loss, ax_err):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  heading = " — ".join(t for t in (title, budget_note(study)) if t)
  if heading:
    fig.suptitle(heading)
  fig.tight_layout()
  try:
    return _save(fig, path)
  finally:
    plt.close(fig)
