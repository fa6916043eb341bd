"""Programmatic comparison of network variants: train each (variant, seed), tabulate, plot.

>>> study = rj.compare(base="cifar10_resnet110",
...                    variants={"identity": {"model.shortcut": "B"}, "gate": {"model.shortcut": "gate"}},
...                    seeds=(0, 1, 2), workdir="runs/skip", overrides={"num_steps": 64000})
>>> print(study.table(baseline="identity"))   # and each variant minus the baseline, paired by seed
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

import ml_collections

from resnet_jax import errors
from resnet_jax import configs
from resnet_jax import stats
from resnet_jax import study_plot
from resnet_jax.paper import PaperResult
from resnet_jax.runtime import allocator
from resnet_jax.runtime.provenance import code_version, device_description
from resnet_jax.storage import files as files_lib
from resnet_jax.storage import records
from resnet_jax.storage.workdir import ConfigChangedError, Workdir, config_changes, describe_changes
from resnet_jax.train import build
from resnet_jax.train import config as config_lib
from resnet_jax.train import loop
from resnet_jax.train import packing
from resnet_jax.train import report

RESULT_FILE = Workdir.RESULT
ON_CHANGE = ("error", "rerun")
# A variant may train from another config: {"resnet110": {"config": "cifar10_resnet110"}}.
CONFIG_KEY = "config"


@dataclasses.dataclass
class StudyRun:
  """One (variant, seed) of a study and its workdir."""
  variant: str
  seed: int
  workdir: Workdir

  @property
  def result_path(self):
    return self.workdir / RESULT_FILE

  @property
  def finished(self) -> bool:
    return self.workdir.has(RESULT_FILE)

  def result(self) -> Optional[dict]:
    return self.workdir.read_json(RESULT_FILE) if self.finished else None

  def saved_step(self) -> Optional[int]:
    """The step of the run's newest checkpoint (None before its first)."""
    steps = self.workdir.saved_steps()
    return steps[-1] if steps else None

  def curves(self) -> list[dict]:
    return self.workdir.read_metrics()


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single run)."""
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


class Study:
  """A set of runs: every variant of a base config, trained with every seed."""

  def __init__(self, base: str, variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int],
               workdir: str | pathlib.Path,
               overrides: Optional[Mapping[str, Any] | Callable[[ml_collections.ConfigDict], Mapping[str, Any]]] = None,
               paper: Optional[Mapping[str, PaperResult | float | None]] = None,
               error_label: str = "test error", metric: str = "error", on_change: str = "error",
               baseline: Optional[str] = None):
    if on_change not in ON_CHANGE:
      raise errors.InputError(f"on_change={on_change!r} is not one of {ON_CHANGE}")
    self.on_change = on_change
    if not variants:
      raise errors.InputError("compare needs at least one variant, e.g. {'identity': {}}")
    if not seeds:
      raise errors.InputError("compare needs at least one seed")
    self.base = base
    self.variants = {k: dict(v) for k, v in variants.items()}
    self.seeds = tuple(int(s) for s in seeds)
    self.workdir = files_lib.as_path(workdir)
    self.overrides = overrides if callable(overrides) else dict(overrides or {})
    self.paper = dict(paper or {})
    self.error_label = error_label
    self.metric = metric
    if baseline is not None and baseline not in self.variants:
      raise errors.InputError(f"baseline={baseline!r} is not a variant; valid: {', '.join(self.variants)}")
    self.baseline = baseline
    self.configs, self.base_configs = {}, {}  # each variant's config, and the config it starts from
    for name, variant in self.variants.items():
      if "/" in name or name in ("", ".", ".."):
        raise errors.InputError(f"variant name {name!r} must be usable as a folder name")
      variant = dict(variant)
      base_config = configs.load(variant.pop(CONFIG_KEY, base))
      common = self.overrides(base_config) if callable(self.overrides) else self.overrides
      self.configs[name] = configs.apply_overrides(base_config, {**common, **variant})
      self.base_configs[name] = base_config
    self.runs = [StudyRun(v, s, Workdir(self.workdir / v / f"seed{s}")) for v in self.variants for s in self.seeds]

  def config_for(self, run: StudyRun) -> ml_collections.ConfigDict:
    return configs.apply_overrides(self.configs[run.variant], {"seed": run.seed})

  def run(self, train_fn: Optional[Callable[..., dict]] = None, log: Callable[[str], None] = print,
          pack: bool | str = "auto", time_limit: Optional[float | str] = None) -> "Study":
    """Trains every unfinished run (resuming from its checkpoint); finished runs are skipped.

    `pack`: True trains the runs that can share a program (`train.packing`: seeds, and
    variants that change values, not shapes) packed, one program per group; "auto" does so
    when the backend is an accelerator (on a CPU packing buys nothing: it is compute-bound);
    False trains every run alone. `time_limit` (seconds, or "10m"): at the limit every run
    in training saves and the call returns; running it again continues (`unfinished()`).
    """
    deadline = None if time_limit is None else time.monotonic() + report.parse_duration(time_limit)
    todo = [run for run in self.runs if not self._prepare(run, log)]
    note = allocator.python_note() if todo else None
    if note:  # a Python program cannot preload an allocator itself: it was silently 25-40 % slower
      log(note)
    groups = self.pack_groups(todo, pack) if train_fn is None else [[run] for run in todo]
    if any(len(g) > 1 for g in groups):
      log(f"{len(todo)} runs to train in {len(groups)} programs: " + "; ".join(
          ", ".join(f"{r.variant} seed {r.seed}" for r in g) + (" (packed)" if len(g) > 1 else "") for g in groups))
    train_fn = loop.train if train_fn is None else train_fn
    for group in groups:
      left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
      names = ", ".join(f"{r.variant} seed {r.seed}" for r in group)
      log(f"[{names}] training {'packed in one program ' if len(group) > 1 else ''}in "
          f"{group[0].workdir.path.parent if len(group) > 1 else group[0].workdir}")
      start = time.time()
      if len(group) > 1:
        outs = loop.train_packed([self.config_for(r) for r in group], [r.workdir for r in group], time_limit=left,
                                 labels=[f"[{r.variant} seed{r.seed}] " for r in group])
      else:
        outs = [train_fn(self.config_for(group[0]), group[0].workdir, **({"time_limit": left} if left is not None else {}))]
      for run, out in zip(group, outs):
        self._record(run, out, time.time() - start, log)
      stopped = next((out.stopped for out in outs if out.preempted), "")
      if stopped:  # the process is asked to end: no other run starts
        raise errors.Stopped(f"{stopped}: the runs in training saved; run the same command again to continue "
                             "the study")
      if any(out.stopped for out in outs):
        break
    finished = sum(r.finished for r in self.runs)
    if finished < len(self.runs):
      log(f"{finished} of {len(self.runs)} runs finished; run the same command again to continue")
    return self

  def pack_groups(self, runs: Sequence[StudyRun], pack: bool | str = "auto") -> list[list[StudyRun]]:
    """`runs` in groups trained together: by `train.packing.groups`, or one by one."""
    if pack not in (True, False, "auto"):
      raise errors.InputError(f"pack={pack!r} is not one of True, False, 'auto'")
    if pack == "auto":
      pack = packing.packs_by_default()
    if not pack:
      return [[run] for run in runs]
    return [[runs[i] for i in group] for group in packing.groups([self.config_for(r) for r in runs])]

  def _record(self, run: StudyRun, out: loop.RunResult, wall_time: float, log: Callable[[str], None]) -> None:
    """Writes a finished run's result.json; reports a run that stopped early."""
    if out.error is not None:
      log(f"[{run.variant} seed {run.seed}] stopped: {out.error}")
      return
    if out.stopped:
      return
    config = self.config_for(run)
    record = {
        "base": self.base, "variant": run.variant, "seed": run.seed, "step": int(out.step),
        "eval": out.eval, "train": out.train, "wall_time_s": wall_time,
        **code_version(), "device": device_description(), "config": config.to_dict(),
    }
    run.workdir.write_text(RESULT_FILE, json.dumps(record, indent=2, default=str) + "\n")

  def _prepare(self, run: StudyRun, log: Callable[[str], None]) -> bool:
    """Checks a run's workdir against its config (moving it aside if asked); True if finished."""
    config = self.config_for(run)
    changes = self._changes(run, config)
    if changes:
      what = f"[{run.variant} seed {run.seed}] {run.workdir} was trained with other settings: {changes}"
      if self.on_change == "error":
        raise ConfigChangedError(
            f"{what} (trained -> requested). Use another study workdir, or on_change='rerun' to move the "
            "old runs aside and train them again")
      aside = Workdir(run.workdir.path.with_name(f"{run.workdir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))
      run.workdir.move_to(aside)
      log(f"{what}; moved it to {aside} and training it again")
    if run.finished:
      log(f"[{run.variant} seed {run.seed}] finished earlier: {run.result_path}")
    return run.finished

  def _changes(self, run: StudyRun, config: ml_collections.ConfigDict) -> str:
    """The fields in which `run`'s stored config differs from `config` ("" if none or no run)."""
    if run.finished:
      saved = run.result().get("config")
    elif run.workdir.has(config_lib.CONFIG_FILE) and run.workdir.saved_steps():
      saved = config_lib.load_config(run.workdir)
    else:
      return ""
    if saved is None:
      return ""
    return describe_changes(config_changes(saved, config, defaults=build.field_defaults(config)))

  def results(self) -> list[dict]:
    return [r.result() for r in self.runs if r.finished]

  def summary(self, baseline: Optional[str] = None) -> dict[str, dict[str, Any]]:
    """Per variant, over its finished seeds: best, mean, std and median of the final eval error,
    the number finished of all seeds, the unfinished runs' steps and the paper's figure; with a
    `baseline` (default: the study's), also `vs_baseline`, the paired difference
    (`stats.PairedDifference`) of every other variant."""
    baseline = self._baseline(baseline)
    paired = self.paired(baseline) if baseline else {}
    out = {}
    for variant in self.variants:
      runs = [r for r in self.runs if r.variant == variant]
      errors_ = [self._final(r) for r in runs if r.finished]
      paper = self.paper.get(variant)
      if isinstance(paper, (int, float)):
        paper = PaperResult(float(paper), "given")
      mean, std = _mean_std(errors_) if errors_ else (float("nan"), float("nan"))
      out[variant] = {"runs": len(errors_), "seeds": len(runs), "mean": mean, "std": std,
                      "best": min(errors_) if errors_ else float("nan"),
                      "median": statistics.median(errors_) if errors_ else float("nan"), "paper": paper,
                      "unfinished": {r.seed: r.saved_step() for r in runs if not r.finished}}
      if variant in paired:
        out[variant]["vs_baseline"] = paired[variant]
    return out

  def _baseline(self, baseline: Optional[str]) -> Optional[str]:
    baseline = self.baseline if baseline is None else baseline
    if baseline is not None and baseline not in self.variants:
      raise errors.InputError(f"baseline={baseline!r} is not a variant; valid: {', '.join(self.variants)}")
    return baseline

  def final_errors(self, variant: str) -> dict[int, float]:
    """Seed -> the final eval error of each finished run of `variant`."""
    return {r.seed: self._final(r) for r in self.runs if r.variant == variant and r.finished}

  def paired(self, baseline: str) -> dict[str, stats.PairedDifference]:
    """Every other variant minus `baseline`, paired by seed (runs of one seed share their data
    order and augmentation); variants without a finished seed in common are left out."""
    base = self.final_errors(self._baseline(baseline))
    out = {}
    for variant in self.variants:
      own = self.final_errors(variant)
      if variant != baseline and set(own) & set(base):
        out[variant] = stats.paired_difference(base, own, variant, baseline)
    return out

  def _final(self, run: StudyRun) -> float:
    evaluation = run.result()["eval"]
    if self.metric not in evaluation:
      raise KeyError(f"{run.result_path} has no eval metric {self.metric!r}; it has {sorted(evaluation)}")
    return float(evaluation[self.metric])

  def table(self, baseline: Optional[str] = None) -> str:
    """A markdown table as the papers report their runs: per variant the finished seeds, our best,
    mean ± std and median, the paper's figure in its own format, and the difference of the
    statistic the paper reports (our median against a median, our best against a best); then
    the runs not finished yet, with the step each has reached; then, with a `baseline`
    (default: the study's), each variant minus the baseline, paired by seed (`paired_table`)."""
    lines = [f"| variant | seeds finished | ours, {self.error_label} (%): best | mean ± std | median | paper (%) | "
             "difference |", "|---|---|---:|---:|---:|---|---:|"]
    pending = []
    for variant, s in self.summary().items():
      n = s["runs"]
      if n:
        ours = f"{s['best']:.2f} | {s['mean']:.2f} ± {s['std']:.2f} | {s['median']:.2f}"
      else:
        ours = "– | – | –"
      paper = s["paper"]
      diff = "–"
      if paper is not None and paper.error is not None and n:
        key = {"single": "mean"}.get(paper.statistic, paper.statistic)
        diff = f"{s[key] - paper.error:+.2f} ({key})"
      lines.append(f"| {variant} | {n} of {s['seeds']} | {ours} | {paper.text() if paper else '–'} | {diff} |")
      pending += [f"{variant} seed {seed}: " + (f"step {step:,}" if step else "not started")
                  for seed, step in s["unfinished"].items()]
    if pending:
      lines += ["", "Not finished (run the same command again to continue): " + "; ".join(pending) + "."]
    baseline = self._baseline(baseline)
    if baseline is not None:
      lines += ["", self.paired_table(baseline)]
    return "\n".join(lines)

  def paired_table(self, baseline: str) -> str:
    """Each variant minus `baseline`, paired by seed: the mean difference with its 95 %
    confidence interval (percentage points), whether it is resolved (the interval excludes 0),
    and how many seeds would resolve a difference of that size at that spread (80 % power)."""
    lines = [f"| variant − {baseline} | paired seeds | difference, points (95 % CI) | resolved | "
             "seeds for 80 % power |", "|---|---:|---:|---|---:|"]
    for variant, d in self.paired(baseline).items():
      needed = "–" if d.seeds_for_power is None else f"{d.seeds_for_power:,}"
      verdict = "yes" if d.resolved else "not resolved"
      lines.append(f"| {variant} | {len(d.seeds)} | {d.text()} | {verdict} | {needed} |")
    return "\n".join(lines)

  def plot(self, path: str | pathlib.Path, title: Optional[str] = None) -> pathlib.Path:
    """Training loss and eval error vs iteration, one colour per variant: each seed a thin line,
    their mean a thick one; the eval axis names the split and its size, chance level is drawn
    where the errors come near it, and a reduced budget is marked (`study_plot`)."""
    return study_plot.plot(self, path, title)


def compare(base: str, variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int] = (0,),
            workdir: str | pathlib.Path = "runs/compare", overrides: Any = None,
            paper: Optional[Mapping[str, Any]] = None, run: bool = True,
            error_label: str = "test error", metric: str = "error", on_change: str = "error",
            pack: bool | str = "auto", time_limit: Optional[float | str] = None,
            baseline: Optional[str] = None) -> Study:
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
    pack: train the runs that can share one program packed (seeds; variants that change
      values, not shapes): ``True``, ``False``, or ``"auto"`` (when the backend is an accelerator).
    time_limit: seconds or text ("10m"): at the limit every run saves and `compare` returns;
      the table marks the unfinished runs; calling it again continues them.
    baseline: the variant the others are compared with, paired by seed (`Study.paired`), in
      `table()` and `summary()`.
  """
  study = Study(base, variants, seeds, workdir, overrides, paper, error_label, metric, on_change, baseline)
  return study.run(pack=pack, time_limit=time_limit) if run else study
