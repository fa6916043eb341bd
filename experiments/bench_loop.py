"""What a training run costs beyond its steps: the loop, evaluations and checkpoints, measured.

  python experiments/bench_loop.py                       # tiny network, eval every epoch, CPU or GPU
  python experiments/bench_loop.py --config cifar10_resnet20 --steps 2000 --cifar10-source DIR

Trains the config with `rj.train.train` under two checkpoint policies, one after the other
in fresh workdirs: "save every eval" (a checkpoint at every evaluation, as the loop did
before evaluation and checkpoints were decoupled) and "cadence" (checkpoints only every
`checkpoint_every_steps` and at the end; evaluations dispatched without waiting). Beside
each run's wall time it measures, in the same process, the bare train step (median of timed
windows, the compiled step on a batch already on the devices), one whole evaluation pass and
the compile times, and prints

  overhead = wall - (steps x step time + evals x eval time + compile)

as a share of steps x step time, where wall is the training session's (`sessions.jsonl`: from
the first dispatch to the final save); building the pipeline and the state before it is
reported apart as start-up. The persistent compilation cache is off, so every run pays
its own compile, which is measured. Without `--cifar10-source` the data is a generated
CIFAR-10-format set (the speed does not depend on the pixels).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import jax

import resnet_jax as rj
import resnet_jax.data as rjd
from resnet_jax.data import testing as data_testing
from resnet_jax.storage.workdir import Workdir
from resnet_jax.train import build
from resnet_jax.train import evaluation
from resnet_jax.train import state as state_lib
from resnet_jax.train import step as step_lib


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="cifar10_resnet20:smoke")
  p.add_argument("--steps", type=int, default=400, help="training steps per run")
  p.add_argument("--eval-every-epochs", type=int, default=1)
  p.add_argument("--checkpoint-every-steps", type=int, default=1000, help="the cadence policy's period")
  p.add_argument("--cifar10-source", default=None, help="official CIFAR-10 files (default: generated ones)")
  p.add_argument("--train-split", default="train[:640]")
  p.add_argument("--eval-split", default="test[:200]")
  p.add_argument("--windows", type=int, default=5, help="timed windows of the bare step")
  p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
  return p.parse_args(argv)


def _config(args, data_dir: pathlib.Path, **overrides):
  return rj.configs.load(args.config, {
      "num_steps": args.steps, "num_epochs": -1.0, "data.data_dir": str(data_dir),
      "data.train_split": args.train_split, "data.eval_split": args.eval_split,
      "eval_every_epochs": args.eval_every_epochs, "log_every_steps": 100, **overrides})


def _median_seconds(fn, windows: int) -> float:
  times = []
  for _ in range(windows):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure_parts(config, windows: int) -> dict:
  """Bare step time, one evaluation pass and their compile times, in this process."""
  exp = build.experiment(config)
  pipe = exp.pipeline
  state = state_lib.create_train_state(exp.model, exp.tx, exp.mesh, exp.image_shape, config.seed)
  sums = step_lib.new_metrics(step_lib.zero_train_metrics, exp.mesh)
  batch = next(pipe.train_iterator())
  train_step = step_lib.make_train_step(exp.model, exp.tx, config, exp.mesh, pipe.preprocess, pipe.num_classes)
  t0 = time.perf_counter()
  compiled = train_step.lower(state, sums, batch).compile()
  step_compile = time.perf_counter() - t0
  holder = {"state": state, "sums": sums}
  steps_per_window = 20

  def window():
    s, m = holder["state"], holder["sums"]
    for _ in range(steps_per_window):
      s, m = compiled(s, m, batch)
    jax.block_until_ready(s)
    holder.update(state=s, sums=m)
  window()  # warm-up
  step_s = _median_seconds(window, windows) / steps_per_window

  eval_step = evaluation.pipeline_eval_step(exp.model, exp.mesh, pipe)
  params, stats = holder["state"].params, holder["state"].batch_stats
  t0 = time.perf_counter()
  evaluation.evaluate_params(eval_step, params, stats, pipe, exp.mesh)  # compiles
  eval_first = time.perf_counter() - t0
  eval_s = _median_seconds(lambda: evaluation.evaluate_params(eval_step, params, stats, pipe, exp.mesh), windows)
  return {"step_s": step_s, "step_compile_s": step_compile, "eval_s": eval_s,
          "eval_compile_s": max(eval_first - eval_s, 0.0), "steps_per_epoch": exp.steps_per_epoch}


def run_policy(config, workdir: pathlib.Path, parts: dict) -> dict:
  """Trains `config` in `workdir`; the loop's wall time is the training session's (from the
  first dispatch to the last save, `sessions.jsonl`), the rest of the call is start-up."""
  t0 = time.perf_counter()
  result = rj.train.train(config, workdir)
  total = time.perf_counter() - t0
  wall = [s for s in Workdir(workdir).read_sessions() if s["event"] == "end"][-1]["wall_s"]
  records = Workdir(workdir).read_metrics()
  evals = sum(1 for r in records if r["kind"] == "eval")
  saves = len([p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()])
  steps = int(result.step)
  expected = (steps * parts["step_s"] + evals * parts["eval_s"] + parts["step_compile_s"] + parts["eval_compile_s"])
  return {"wall_s": wall, "startup_s": total - wall, "steps": steps, "evals": evals, "checkpoints_kept": saves, "expected_s": expected,
          "overhead_s": wall - expected, "overhead_of_steps": (wall - expected) / (steps * parts["step_s"])}


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  jax.config.update("jax_enable_compilation_cache", False)  # each run pays (and we measure) its compile
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    source = args.cifar10_source or data_testing.write_cifar10_binary(
        tmp / "src", num_train_per_batch=200, num_test=200, seed=0)
    data_dir = tmp / "tfds"
    rjd.prepare("cifar10", source, data_dir, allow_partial=True)  # any subset measures the loop
    parts = measure_parts(_config(args, data_dir), args.windows)
    every_eval = parts["steps_per_epoch"] * args.eval_every_epochs
    policies = {
        "save every eval": _config(args, data_dir, checkpoint_every_steps=every_eval, keep_best_checkpoints=1),
        "cadence": _config(args, data_dir, checkpoint_every_steps=args.checkpoint_every_steps,
                           keep_best_checkpoints=0),
    }
    runs = {name: run_policy(config, tmp / name.replace(" ", "_"), parts) for name, config in policies.items()}
  device = jax.devices()[0]
  print(f"\n{args.config} on {jax.device_count()} x {device.device_kind} ({device.platform}), jax {jax.__version__}: "
        f"bare step {1000 * parts['step_s']:.2f} ms (compile {parts['step_compile_s']:.1f} s), one eval pass "
        f"{1000 * parts['eval_s']:.1f} ms (compile {parts['eval_compile_s']:.1f} s), "
        f"{parts['steps_per_epoch']} steps/epoch")
  print("| policy | steps | evals | checkpoints kept | start-up s | loop wall s | "
        "steps×step + evals×eval + compile, s | overhead s | overhead / steps×step |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for name, r in runs.items():
    print(f"| {name} | {r['steps']} | {r['evals']} | {r['checkpoints_kept']} | {r['startup_s']:.1f} | "
          f"{r['wall_s']:.1f} | {r['expected_s']:.1f} | {r['overhead_s']:+.1f} | {100 * r['overhead_of_steps']:+.1f} % |")
  if args.json:
    print(json.dumps({"config": args.config, "device": device.device_kind, "platform": device.platform,
                      "jax": jax.__version__, "parts": parts, "runs": runs}, default=float))
  return 0


if __name__ == "__main__":
  sys.exit(main())
