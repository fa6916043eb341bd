"""Programmatic comparison of network variants: train each (variant, seed), tabulate, plot.

>>> study = rj.compare(base="cifar10_resnet110",
...                    variants={"identity": {"model.shortcut": "B"}, "gate": {"model.shortcut": "gate"}},
...                    seeds=(0, 1, 2), workdir="runs/skip", overrides={"num_steps": 64000})
>>> print(study.table())
>>> study.plot("curves.png")

Every run trains in ``workdir/<variant>/seed<k>`` and resumes from its checkpoint
when the study is run again; a finished run (its ``result.json`` written) is not
redone. Running a study again with other settings than its runs were trained with
is an error naming the changed fields, unless ``on_change="rerun"`` (the old run is
moved aside to ``<run>.replaced-<time>`` and trained anew).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import matplotlib
import ml_collections

from resnet_jax import configs
from resnet_jax.paper import PaperResult
from resnet_jax.runtime.provenance import device_description, git_commit
from resnet_jax.train import config as config_lib
from resnet_jax.train import loop
from resnet_jax.train import metrics
from resnet_jax.train import workdir as workdir_lib
from resnet_jax.train import workdir_io

RESULT_FILE = "result.json"
ON_CHANGE = ("error", "rerun")
# A variant may train from another config: {"resnet110": {"config": "cifar10_resnet110"}}.
CONFIG_KEY = "config"


@dataclasses.dataclass
class Run:
  variant: str
  seed: int
  workdir: pathlib.Path

  @property
  def result_path(self) -> pathlib.Path:
    return self.workdir / RESULT_FILE

  @property
  def finished(self) -> bool:
    return self.result_path.is_file()

  def result(self) -> Optional[dict]:
    return json.loads(workdir_io.read_text(self.result_path)) if self.finished else None

  def curves(self) -> list[dict]:
    return metrics.read_metrics(self.workdir)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single run)."""
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


class StudyConfigChangedError(ValueError):
  """A study was run again with settings other than those its runs were trained with."""


class Study:
  """A set of runs: every variant of a base config, trained with every seed."""

  def __init__(self, base: str, variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int],
               workdir: str | pathlib.Path,
               overrides: Optional[Mapping[str, Any] | Callable[[ml_collections.ConfigDict], Mapping[str, Any]]] = None,
               paper: Optional[Mapping[str, PaperResult | float | None]] = None,
               error_label: str = "test error", metric: str = "error", on_change: str = "error"):
    if on_change not in ON_CHANGE:
      raise ValueError(f"on_change={on_change!r} is not one of {ON_CHANGE}")
    self.on_change = on_change
    if not variants:
      raise ValueError("compare needs at least one variant, e.g. {'identity': {}}")
    if not seeds:
      raise ValueError("compare needs at least one seed")
    self.base = base
    self.variants = {k: dict(v) for k, v in variants.items()}
    self.seeds = tuple(int(s) for s in seeds)
    self.workdir = pathlib.Path(workdir)
    self.overrides = overrides if callable(overrides) else dict(overrides or {})
    self.paper = dict(paper or {})
    self.error_label = error_label
    self.metric = metric
    self.configs = {}
    for name, variant in self.variants.items():
      if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"variant name {name!r} must be usable as a folder name")
      variant = dict(variant)
      base_config = configs.load(variant.pop(CONFIG_KEY, base))
      common = self.overrides(base_config) if callable(self.overrides) else self.overrides
      self.configs[name] = configs.apply_overrides(base_config, {**common, **variant})
    self.runs = [Run(v, s, self.workdir / v / f"seed{s}") for v in self.variants for s in self.seeds]

  def config_for(self, run: Run) -> ml_collections.ConfigDict:
    return configs.apply_overrides(self.configs[run.variant], {"seed": run.seed})

  def run(self, train_fn: Optional[Callable[..., dict]] = None, log: Callable[[str], None] = print) -> "Study":
    """Trains every unfinished run (resuming from its checkpoint); finished runs are skipped."""
    train_fn = loop.train if train_fn is None else train_fn
    for run in self.runs:
      config = self.config_for(run)
      changes = self._changes(run, config)
      if changes:
        what = f"[{run.variant} seed {run.seed}] {run.workdir} was trained with other settings: {changes}"
        if self.on_change == "error":
          raise StudyConfigChangedError(
              f"{what} (trained -> requested). Use another study workdir, or on_change='rerun' to move the "
              "old runs aside and train them again")
        aside = run.workdir.with_name(f"{run.workdir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        run.workdir.rename(aside)
        log(f"{what}; moved it to {aside} and training it again")
      if run.finished:
        log(f"[{run.variant} seed {run.seed}] finished earlier: {run.result_path}")
        continue
      log(f"[{run.variant} seed {run.seed}] training in {run.workdir}")
      start = time.time()
      out = train_fn(config, run.workdir)
      if out.get("preempted"):
        raise KeyboardInterrupt(f"{run.workdir} was preempted; rerun the study to resume")
      record = {
          "base": self.base, "variant": run.variant, "seed": run.seed, "step": int(out["step"]),
          "eval": out["eval"], "train": out["train"], "wall_time_s": time.time() - start,
          "commit": git_commit(), "device": device_description(), "config": config.to_dict(),
      }
      workdir_io.write_atomic(run.result_path, json.dumps(record, indent=2, default=str) + "\n")
    return self

  def _changes(self, run: Run, config: ml_collections.ConfigDict) -> str:
    """The fields in which `run`'s stored config differs from `config` ("" if none or no run)."""
    if run.finished:
      saved = run.result().get("config")
    elif (run.workdir / config_lib.CONFIG_FILE).is_file() and any((run.workdir / "checkpoints").glob("[0-9]*")):
      saved = config_lib.load_config(run.workdir)
    else:
      return ""
    if saved is None:
      return ""
    return workdir_lib.describe_changes(workdir_lib.config_changes(saved, config))

  def results(self) -> list[dict]:
    return [r.result() for r in self.runs if r.finished]

  def summary(self) -> dict[str, dict[str, Any]]:
    """Per variant: mean and std of the final eval error over finished seeds, and the paper's figure."""
    out = {}
    for variant in self.variants:
      errors = [self._final(r) for r in self.runs if r.variant == variant and r.finished]
      paper = self.paper.get(variant)
      if isinstance(paper, (int, float)):
        paper = PaperResult(float(paper), "given")
      mean, std = _mean_std(errors) if errors else (float("nan"), float("nan"))
      out[variant] = {"runs": len(errors), "mean": mean, "std": std, "paper": paper}
    return out

  def _final(self, run: Run) -> float:
    evaluation = run.result()["eval"]
    if self.metric not in evaluation:
      raise KeyError(f"{run.result_path} has no eval metric {self.metric!r}; it has {sorted(evaluation)}")
    return float(evaluation[self.metric])

  def table(self) -> str:
    """A markdown table: ours (mean ± std over seeds), the paper's, and the difference."""
    lines = [f"| variant | runs | ours: {self.error_label} (%) | paper (%) | difference |",
             "|---|---|---|---|---|"]
    for variant, s in self.summary().items():
      ours = "not run" if not s["runs"] else (f"{s['mean']:.2f} ± {s['std']:.2f}" if s["runs"] > 1
                                              else f"{s['mean']:.2f}")
      paper = s["paper"]
      if paper is None:
        paper_text, diff = "–", "–"
      elif paper.error is None:
        paper_text, diff = ("fail (>20)" if paper.note == "fail" else "curve only"), "–"
      else:
        paper_text = f"{paper.error:.2f}"
        diff = f"{s['mean'] - paper.error:+.2f}" if s["runs"] else "–"
      lines.append(f"| {variant} | {s['runs']} | {ours} | {paper_text} | {diff} |")
    return "\n".join(lines)

  def plot(self, path: str | pathlib.Path, title: Optional[str] = None) -> pathlib.Path:
    """Training loss and eval error vs iteration, one line per variant (mean over seeds)."""
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  (after choosing the backend)
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant in self.variants:
      runs = [r for r in self.runs if r.variant == variant]
      for kind, key, ax in (("train", "loss", ax_loss), ("eval", self.metric, ax_err)):
        by_step: dict[int, list[float]] = {}
        for run in runs:
          for step, rec in metrics.latest_per_step(run.curves(), kind, key).items():
            by_step.setdefault(step, []).append(rec[key])
        if by_step:
          steps = sorted(by_step)
          ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], label=variant,
                  marker="." if len(steps) < 30 else None)
    ax_loss.set(xlabel="iteration", ylabel="training loss", title="training loss")
    ax_err.set(xlabel="iteration", ylabel=f"{self.error_label} (%)", title=self.error_label)
    for ax in (ax_loss, ax_err):
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
    if title:
      fig.suptitle(title)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(base: str, variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int] = (0,),
            workdir: str | pathlib.Path = "runs/compare", overrides: Any = None,
            paper: Optional[Mapping[str, Any]] = None, run: bool = True,
            error_label: str = "test error", metric: str = "error", on_change: str = "error") -> Study:
  """Trains every variant of ``base`` with every seed (resuming, skipping finished runs).

  Args:
    base: a config name (``rj.configs.names()``, e.g. ``"cifar10_resnet110"``, ``":smoke"``
      allowed) or a path.
    variants: variant name → dotted-key overrides, e.g. ``{"gate": {"model.shortcut": "gate"}}``;
      the key ``"config"`` trains that variant from another config (``{"config": "cifar10_plain20"}``).
    seeds: one run per seed and variant.
    workdir: runs go to ``workdir/<variant>/seed<k>``.
    overrides: applied to every variant (before the variant's own); or a function of the
      variant's base config returning them (e.g. to scale its schedule).
    paper: variant name → the paper's error (a float or ``resnet_jax.paper.PaperResult``).
    run: False builds the study without training (e.g. to tabulate finished runs).
    error_label: how the table and figure name the compared metric.
    metric: the eval metric compared (`"error"`, `"top5_error"`, `"ten_crop_error"` with
      `data.ten_crop`).
    on_change: what to do with a run trained with other settings than requested now
      (another `overrides`, variant or base): ``"error"`` (default; names the fields) or
      ``"rerun"`` (moves it to ``<run>.replaced-<time>`` and trains it again).
  """
  study = Study(base, variants, seeds, workdir, overrides, paper, error_label, metric, on_change)
  return study.run() if run else study
