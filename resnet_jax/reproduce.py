"""The command line and reporting shared by the paper-reproduction scripts (`experiments/*.py`).

Public so that a user's own reproduction script gets the same flags, protocols and
outputs: build `Comparison`s of variants and call `run(...)` (see `experiments/cifar_depth.py`).

Every script takes ``--workdir`` (runs resume there; finished runs are not redone),
``--smoke`` (the configs' tiny ``:smoke`` variants, a few steps on CPU), ``--steps`` /
``--scale`` for reduced budgets, ``--seeds`` and ``--protocol``, prints a markdown
table (ours, paper, difference) and writes ``table.md``, ``results.json`` (config,
seed, commit, device and wall time of every run) and a PNG figure to ``--results``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Mapping, Optional, Sequence

from resnet_jax import errors
import resnet_jax as rj
import resnet_jax.data as rjd
from resnet_jax import study as study_lib
from resnet_jax.paper import PaperResult
from resnet_jax.runtime.provenance import code_version, describe_code, device_description
from resnet_jax.storage import files as files_lib
from resnet_jax.train import report

# The papers' CIFAR schedule is in iterations; splits of the two error protocols
# of ../shared/data/README.md (and of the paper's §4.2 45k/5k split).
PROTOCOLS = {
    "heldout": ("train[:45000]", "train[45000:]", "held-out error, train[45000:]"),
    "test": ("train", "test", "test error"),
}
SMOKE_PROTOCOLS = {
    "heldout": ("train[:640]", "train[45000:45200]", "held-out error, train[45000:45200] (smoke)"),
    "test": ("train[:640]", "test[:200]", "test error, test[:200] (smoke)"),
}


@dataclasses.dataclass
class Comparison:
  """One study of an experiment: variants of one base config, with the paper's numbers.

  `overrides` apply to every variant of the group (e.g. `{"data.ten_crop": True}`);
  `metric` is the eval metric compared with the paper (`"error"`, or `"ten_crop_error"`
  for the papers' 10-crop tables), described in the table by `metric_label`; `baseline`,
  the variant the others are compared with, paired by seed (`Study.paired_table`).
  """
  name: str
  base: str
  variants: Mapping[str, Mapping[str, Any]]
  paper: Mapping[str, Optional[PaperResult]]
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  metric: str = "error"
  metric_label: str = ""
  baseline: Optional[str] = None


def parser(description: str, default_workdir: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default=default_workdir, help="runs go to WORKDIR/<group>/<variant>/seed<k>")
  p.add_argument("--results", default=None, help="where table.md, results.json and the figure go "
                 "(default: WORKDIR)")
  p.add_argument("--smoke", action="store_true", help="tiny networks, a few steps, CPU: checks the script runs")
  p.add_argument("--steps", type=int, default=None,
                 help="train this many iterations, with the schedule's drops and warm-up scaled to match")
  p.add_argument("--scale", type=float, default=None, help="multiply the training length and schedule by this")
  p.add_argument("--seeds", type=int, nargs="+", default=[0])
  p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="heldout",
                 help="heldout: train on train[:45000], report error on train[45000:] (the paper's split); "
                      "test: train on all 50k, report error on the test split")
  p.add_argument("--only", nargs="+", default=None, help="run only these variants")
  p.add_argument("--rerun-changed", action="store_true",
                 help="runs in WORKDIR trained with other settings are moved aside and trained again "
                      "(default: an error naming the changed settings)")
  p.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR, ~/tensorflow_datasets)")
  p.add_argument("--cifar10-source", default=os.environ.get("RESNET_JAX_CIFAR10_DIR"),
                 help="official CIFAR-10 files to prepare first if needed (default: $RESNET_JAX_CIFAR10_DIR)")
  p.add_argument("--pack", choices=("auto", "on", "off"), default="auto",
                 help="train the runs that can share one program (seeds; variants that change values, not "
                      "shapes) packed: on, off, or auto (on an accelerator)")
  p.add_argument("--time-limit", default=None, metavar="DURATION",
                 help="save every run and stop at this wall time (90s, 10m, 1h30m); the table marks the "
                      "unfinished runs; the same command again continues")
  p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                 help="extra config overrides for every run, e.g. global_batch_size=256")
  return p


def budget_overrides(base_config, args) -> dict[str, Any]:
  """Overrides that shorten training by ``--steps`` or ``--scale``, keeping the schedule's shape."""
  if args.steps is None and args.scale is None:
    return {}
  if args.steps is not None and args.scale is not None:
    raise SystemExit("error: give --steps or --scale, not both")
  steps_based = base_config.num_steps > 0
  if args.steps is not None:
    if not steps_based:
      raise SystemExit(f"error: --steps needs an iteration-based config; use --scale for "
                       f"{base_config.num_epochs}-epoch configs")
    factor = args.steps / base_config.num_steps
  else:
    factor = args.scale
  if factor <= 0:
    raise SystemExit(f"error: the training budget must be positive, got a factor of {factor}")
  out: dict[str, Any] = {}
  if steps_based:
    out["num_steps"] = max(1, int(round(base_config.num_steps * factor)))
  else:
    out["num_epochs"] = base_config.num_epochs * factor
  out["schedule.boundaries"] = tuple(type(b)(b * factor) if isinstance(b, float) else max(1, int(round(b * factor)))
                                     for b in base_config.schedule.boundaries)
  out["schedule.warmup_length"] = float(base_config.schedule.warmup_length) * factor
  return out


def prepare_data(args, data_dir: Optional[str]) -> None:
  """Prepares CIFAR-10 from ``--cifar10-source`` into ``data_dir`` (a no-op once prepared);
  ``--smoke`` accepts a subset of the official files."""
  if args.cifar10_source:
    rjd.prepare("cifar10", args.cifar10_source, data_dir, allow_partial=args.smoke)


def _studies(groups: Sequence[Comparison], args, splits: tuple[str, str, str], data_dir: Optional[str]) -> list:
  """`(comparison, base config name, study)` of every comparison with variants left by `--only`.

  Every study is built first: a bad variant or `--set` key fails before any data or training.
  """
  bad = [kv for kv in args.set if "=" not in kv]
  if bad:
    raise errors.InputError(f"--set {bad[0]!r} is not KEY=VALUE, e.g. --set global_batch_size=256")
  # Strings: parsed like `resnet-jax train --config.KEY=VALUE` (resnet_jax.configs.apply_overrides).
  extra = dict(kv.split("=", 1) for kv in args.set)
  suffix = ":smoke" if args.smoke else ""
  workdir = files_lib.as_path(args.workdir)
  studies = []
  for group in groups:
    variants = {k: v for k, v in group.variants.items() if args.only is None or k in args.only}
    if not variants:
      continue
    variants = {k: ({**v, study_lib.CONFIG_KEY: v[study_lib.CONFIG_KEY] + suffix} if study_lib.CONFIG_KEY in v else v)
                for k, v in variants.items()}

    def overrides(base_config, group=group):
      out = {"data.train_split": splits[0], "data.eval_split": splits[1], **budget_overrides(base_config, args),
             **group.overrides, **extra}
      if data_dir:
        out["data.data_dir"] = data_dir
      return out

    label = f"{splits[2]}, {group.metric_label}" if group.metric_label else splits[2]
    studies.append((group, group.base + suffix, rj.compare(
        base=group.base + suffix, variants=variants, seeds=args.seeds, workdir=workdir / group.name,
        overrides=overrides, paper=group.paper, error_label=label, metric=group.metric, run=False,
        on_change="rerun" if getattr(args, "rerun_changed", False) else "error",
        baseline=group.baseline if group.baseline in variants else None)))
  if not studies:
    raise errors.InputError(f"--only {args.only} matches no variant of this experiment")
  return studies


def _budget(args) -> str:
  return ("smoke (tiny networks, a few steps)" if args.smoke else
          f"reduced: --steps {args.steps}" if args.steps else
          f"reduced: --scale {args.scale}" if args.scale else "the paper's full schedule")


def run(experiment: str, groups: Sequence[Comparison], args, title: str, notes: Sequence[str] = (),
        splits: Optional[tuple[str, str, str]] = None, data_dir: Optional[str] = None) -> dict:
  """Runs every comparison, prints and writes the table, figure and results file.

  `splits` (train split, eval split, label) and `data_dir` replace the CIFAR
  protocols and data preparation (the ImageNet script passes its own).
  """
  start = time.time()
  cifar = splits is None
  if cifar:
    data_dir = args.data_dir or os.environ.get("TFDS_DATA_DIR")
    splits = (SMOKE_PROTOCOLS if args.smoke else PROTOCOLS)[args.protocol]
    protocol = f"{args.protocol} ({splits[2]})"
  else:
    protocol = splits[2]
  results_dir = files_lib.as_path(args.results or args.workdir)
  results_files = files_lib.files_for(results_dir)
  studies = _studies(groups, args, splits, data_dir)
  if cifar:
    prepare_data(args, data_dir)
  results_files.make_dirs(results_dir)
  tables, records = [], []
  pack = {"on": True, "off": False}.get(getattr(args, "pack", "auto"), "auto")
  limit = getattr(args, "time_limit", None)
  deadline = None if limit is None else time.monotonic() + report.parse_duration(limit)
  for group, base, study in studies:
    study.run(pack=pack, time_limit=None if deadline is None else max(deadline - time.monotonic(), 0.0))
    table = study.table()
    tables.append(f"### {group.name} ({base})\n\n{table}")
    figure = study.plot(results_dir / f"{experiment}_{group.name}.png", title=f"{title}: {group.name}")
    records.extend(study.results())
    print(f"\n### {group.name} ({base})\n\n{table}\n\nfigure: {figure}", flush=True)
  header = [f"# {title}", "", f"- budget: {_budget(args)}", f"- protocol: {protocol}",
            f"- seeds: {args.seeds}", f"- code: {describe_code()}",
            f"- device: {device_description()}", *[f"- {n}" for n in notes], ""]
  results_files.write_atomic(results_dir / "table.md", "\n".join(header) + "\n" + "\n\n".join(tables) + "\n")
  summary = {"experiment": experiment, "title": title, "budget": _budget(args), "protocol": protocol,
             "error_label": splits[2], "seeds": args.seeds, "wall_time_s": time.time() - start,
             **code_version(), "device": device_description(), "runs": records}
  results_files.write_json(results_dir / "results.json", summary, indent=2)
  print(f"\nwrote {results_dir / 'table.md'} and {results_dir / 'results.json'}", flush=True)
  return summary


def main_guard(fn) -> None:
  """Runs an experiment's `main`: its documented faults (bad flags, changed settings, busy or
  damaged workdirs, a full disk) end in one line on stderr with their exit code, not a traceback;
  so do a signal that stopped its runs after saving (`errors.Stopped`, exit 0) and a second
  Ctrl-C (exit 130), as for `resnet-jax`."""
  try:
    fn()
  except errors.Error as e:
    print(f"error: {e}" if e.exit_code else str(e), file=sys.stderr)
    errors.end_if_it_must(e)
    raise SystemExit(e.exit_code) from None
  except OSError as e:  # storage outside resnet_jax's own files
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1) from None
  except KeyboardInterrupt:  # Ctrl-C outside training, or a second one
    print("interrupted", file=sys.stderr)
    raise SystemExit(130) from None
