"""Summarises the full-schedule ResNet-20 run: results.json, the Fig. 6-style curves, a table.

  python report.py --workdir RUN_WORKDIR [--test-eval eval_test.json] [--out THIS_FOLDER]

Reads what the run wrote (config.json, metrics.jsonl, sessions.jsonl) and, when given, the
``resnet-jax eval --split test --json`` line of the final checkpoint; `run.sh finish` calls it.
It reports only what those files hold: an unfinished run is reported as unfinished.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

from resnet_jax import paper
from resnet_jax.storage import records
from resnet_jax.storage.workdir import Workdir

HERE = pathlib.Path(__file__).resolve().parent
MODEL = "cifar_resnet20"


def segments(sessions: list[dict], metrics: list[dict], batch_size: int) -> list[dict]:
  """One entry per process that trained: steps covered, wall time, throughput.

  A process killed without a chance to log its end (SIGKILL, machine gone) has no "end"
  event; its wall time then runs to its last metrics record before the next start.
  """
  starts = [s for s in sessions if s["event"] == "start"]
  ends = [s for s in sessions if s["event"] == "end"]
  out = []
  for i, start in enumerate(starts):
    t0 = start["time"]
    t1 = starts[i + 1]["time"] if i + 1 < len(starts) else math.inf
    end = next((e for e in ends if t0 <= e["time"] < t1), None)
    seen = [m for m in metrics if t0 <= m["time"] < t1]
    if end is not None:
      last_time, last_step, how = end["time"], end["step"], end["reason"]
    elif seen:
      last = max(seen, key=lambda m: m["time"])
      how = "killed (no end event)" if i + 1 < len(starts) else "no end event (running, or killed)"
      last_time, last_step = last["time"], last["step"]
    else:
      continue
    wall = last_time - t0
    steps = last_step - start["step"]
    out.append({
        "from_step": start["step"], "to_step": last_step, "wall_s": round(wall, 1),
        "images_per_sec": round(steps * batch_size / wall, 1) if wall > 0 else None,
        "ended": how, "host": start.get("host"), "device": start.get("device"),
        "allocator": start.get("allocator"), "commit": start.get("commit"),
        "resumed_from": start.get("resumed_from"),
    })
  return out


def std_error(error_pct: float, n: int) -> float:
  p = error_pct / 100
  return 100 * math.sqrt(p * (1 - p) / n)


def plot(train: dict[int, dict], evals: dict[int, dict], boundaries, num_steps: int,
         path: pathlib.Path, paper_error: float) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax_err, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
  # Fig. 6 of He et al.: dashed = training error, bold = held-out/test error, iterations in 1e4.
  ax_err.plot([s / 1e4 for s in train], [r["error"] for r in train.values()], "--",
              color="tab:orange", lw=0.8, label="training error (running, augmented)")
  ax_err.plot([s / 1e4 for s in evals], [r["error"] for r in evals.values()], "-",
              color="tab:orange", lw=2, label="held-out error, train[45000:]")
  ax_err.axhline(paper_error, color="gray", lw=0.8, ls=":",
                 label=f"paper, 10k test set: {paper_error:.2f} %")
  ax_err.set(xlabel="iter. (1e4)", ylabel="error (%)", ylim=(0, 20),
             title="ResNet-20, CIFAR-10 (cf. He et al. 2015, Fig. 6)")
  ax_loss.plot([s / 1e4 for s in train], [r["loss"] for r in train.values()], lw=0.8,
               label="training loss")
  ax_loss.plot([s / 1e4 for s in evals], [r["loss"] for r in evals.values()], lw=2,
               label="held-out loss")
  ax_loss.set(xlabel="iter. (1e4)", ylabel="cross-entropy", yscale="log", title="loss")
  for ax in (ax_err, ax_loss):
    for b in boundaries:
      ax.axvline(b / 1e4, color="k", lw=0.5, alpha=0.4)
    ax.set_xlim(0, num_steps / 1e4)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, type=pathlib.Path)
  parser.add_argument("--test-eval", type=pathlib.Path,
                      help="file whose last line is `resnet-jax eval --split test --json` output")
  parser.add_argument("--run-commit", default=None, help="the full commit that trained")
  parser.add_argument("--out", type=pathlib.Path, default=HERE)
  args = parser.parse_args(argv)

  config = json.loads((args.workdir / "config.json").read_text())
  metrics = Workdir(args.workdir).read_metrics()
  sessions = Workdir(args.workdir).read_sessions()
  if not metrics or not sessions:
    raise SystemExit(f"error: no {Workdir.METRICS} or {Workdir.SESSIONS} records in "
                     f"{args.workdir}; is --workdir the run's workdir?")
  train = records.latest_per_step(metrics, "train")
  evals = records.latest_per_step(metrics, "eval")
  if not evals:
    raise SystemExit(f"error: no eval record in {args.workdir / 'metrics.jsonl'}")
  num_steps = config["num_steps"]
  final_step = max(evals)
  finished = final_step >= num_steps
  final = evals[final_step]
  best_step = min(evals, key=lambda s: (evals[s]["error"], s))
  segs = segments(sessions, metrics, config["global_batch_size"])
  commits = sorted({s["commit"] for s in segs})
  paper_result = paper.CIFAR10_DEPTH[MODEL]
  heldout_n = int(final.get("num_examples", 5000))

  test = test_n = None
  if args.test_eval is not None:
    lines = [l for l in args.test_eval.read_text().splitlines() if l.strip().startswith("{")]
    if not lines:
      raise SystemExit(f"error: no JSON line in {args.test_eval}; expected `resnet-jax eval --json` output")
    test = json.loads(lines[-1])
    if test.get("step") != final_step or test.get("split") != "test":
      raise SystemExit(f"error: {args.test_eval} evaluates split {test.get('split')!r} at step "
                       f"{test.get('step')}; expected split 'test' at the run's last step {final_step}")
    test_n = int(test.get("num_examples", 1000))

  results = {
      "model": MODEL,
      "status": "finished" if finished else f"unfinished: step {final_step} of {num_steps}",
      "protocol": ("trained on train[:45000] of CIFAR-10 (the paper's 45k/5k split); 'heldout' is the "
                   "error on the 5,000 images train[45000:]; 'test_1k' is the error on the first "
                   "1,000 official test images (all that is available here) of the same model. "
                   "The paper's 8.75 % is on the full 10,000-image test set."),
      "heldout": {"split": config["data"]["eval_split"], "step": final_step,
                  "error": final["error"], "top5_error": final.get("top5_error"),
                  "loss": final["loss"], "num_examples": heldout_n,
                  "standard_error": round(std_error(final["error"], heldout_n), 2),
                  "best_error": evals[best_step]["error"], "best_step": best_step},
      "test_1k": None if test is None else {
          "split": "test", "step": test.get("step"), "error": test["error"],
          "top5_error": test.get("top5_error"), "loss": test.get("loss"),
          "num_examples": test_n, "standard_error": round(std_error(test["error"], test_n), 2)},
      "paper": {"error": paper_result.error, "source": paper_result.source,
                "protocol": "CIFAR-10 test set (10,000 images), trained on 45k"},
      "commit": args.run_commit or (commits[0] if len(commits) == 1 else commits),
      "device": sorted({s["device"] for s in segs}),
      "allocator": sorted({s["allocator"] for s in segs if s["allocator"]}),
      "wall_time_s": round(sum(s["wall_s"] for s in segs), 1),
      "wall_time_h": round(sum(s["wall_s"] for s in segs) / 3600, 2),
      "processes": len(segs),
      "resumes": max(len(segs) - 1, 0),
      "segments": segs,
      "config": config,
  }
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  png = args.out / "curves.png"
  plot(train, evals, config["schedule"].get("boundaries", []), num_steps, png, paper_result.error)

  rows = [
      "| ResNet-20, CIFAR-10 | error (%) | ± s.e. | images | protocol |",
      "|---|---|---|---|---|",
      f"| ours, held out `{config['data']['eval_split']}` (step {final_step}) | {final['error']:.2f} "
      f"| {results['heldout']['standard_error']:.2f} | {heldout_n:,} | trained on `train[:45000]` |",
  ]
  if test is not None:
    t = results["test_1k"]
    rows.append(f"| ours, first 1,000 official test images | {t['error']:.2f} | {t['standard_error']:.2f} "
                f"| {t['num_examples']:,} | same model |")
  rows.append(f"| paper ({paper_result.source}) | {paper_result.error:.2f} | – | 10,000 "
              "| official test set, trained on 45k |")
  print("\n".join(rows))
  print(f"\n{results['status']}; {results['processes']} processes ({results['resumes']} resumes), "
        f"{results['wall_time_h']} h of training wall time on {', '.join(results['device'])}; "
        f"best held-out {evals[best_step]['error']:.2f} % at step {best_step}")
  print(f"wrote {args.out / 'results.json'} and {png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
