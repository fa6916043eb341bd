"""The markdown summary of one `experiments/gpu_check.sh OUTDIR` run: python gpu_check_report.py OUTDIR.

Reads OUTDIR/env.json, bench_*.json, bench_loop.json, r20_metrics.jsonl, r20_sessions.jsonl and
eval_r20_test.json (whichever exist) and prints the tables the READMEs take their GPU figures from,
each headed with the device, versions and commit it was measured with.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Dict, List, Optional


def _load(path: pathlib.Path) -> Optional[Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _jsonl(path: pathlib.Path) -> List[Dict[str, Any]]:
  if not path.is_file():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip().startswith("{")]


def bench_rows(out: pathlib.Path) -> List[str]:
  rows = ["| workload | candidate | img/s | ms/step | TFLOP/s | compile s |", "|---|---|---:|---:|---:|---:|"]
  extra = []
  for path in sorted(out.glob("bench_r*.json")):
    r = _load(path)
    if not r:
      continue
    workload = f"{r['model']} {r['dtype']} b{r['global_batch']} ({r['bn_mode']} BN)"
    for name, x in r["results"].items():
      compile_s = "–" if x["compile_s"] is None else f"{x['compile_s']:.1f}"
      rows.append(f"| {workload} | {name} | {x['img_per_s']:,.0f} | {x['ms_per_step']:.2f} | {x['tflops']:.1f} | "
                  f"{compile_s} |")
    for name, x in r["ratios"].items():
      extra.append(f"- {workload}: speed {name} = {x['median']:.3f}")
    for name, x in r.get("breakdown", {}).items():
      extra.append(f"- {workload}: {name} saves {100 * x['cost_of_step']:+.1f} % of the step ({x['what']})")
    if r.get("peak_memory_bytes"):
      extra.append(f"- {workload}: peak device memory {r['peak_memory_bytes'] / 2**30:.2f} GiB")
  return rows + [""] + extra


def loop_rows(out: pathlib.Path) -> List[str]:
  r = _load(out / "bench_loop.json")
  if not r:
    return []
  p = r["parts"]
  rows = [f"Loop cost beyond the steps ({r['config']}): bare step {1000 * p['step_s']:.2f} ms, one eval "
          f"{1000 * p['eval_s']:.1f} ms, compile {p['step_compile_s'] + p['eval_compile_s']:.1f} s", "",
          "| policy | steps | evals | start-up s | loop wall s | steps×step + evals×eval + compile s | "
          "overhead / steps×step |", "|---|---:|---:|---:|---:|---:|---:|"]
  for name, x in r["runs"].items():
    rows.append(f"| {name} | {x['steps']} | {x['evals']} | {x['startup_s']:.1f} | {x['wall_s']:.1f} | "
                f"{x['expected_s']:.1f} | {100 * x['overhead_of_steps']:+.1f} % |")
  return rows


def train_rows(out: pathlib.Path) -> List[str]:
  metrics = _jsonl(out / "r20_metrics.jsonl")
  if not metrics:
    return []
  evals = [m for m in metrics if m.get("kind") == "eval"]
  ends = [s for s in _jsonl(out / "r20_sessions.jsonl") if s.get("event") == "end"]
  test = _load(out / "eval_r20_test.json")
  packed = [s for s in _jsonl(out / "r20x5_sessions.jsonl") if s.get("event") == "end"]
  final = evals[-1] if evals else {}
  rows = ["| run | steps | held-out error | test error | loop wall s | img/s (whole run) |", "|---|---:|---:|---:|---:|---:|"]
  wall = ends[-1]["wall_s"] if ends else float("nan")
  rate = ends[-1]["images_per_sec"] if ends else float("nan")
  test_text = f"{test['error']:.2f} % ({test['num_examples']} images)" if test else "–"
  rows.append(f"| cifar10_resnet20 | {final.get('step', '–')} | {final.get('error', float('nan')):.2f} % | {test_text} | "
              f"{wall:.1f} | {rate:,.0f} |")
  if packed:
    p = packed[-1]
    rows.append(f"| cifar10_resnet20 × 5 seeds packed (one of them) | {p['step']} | – | – | {p['wall_s']:.1f} | "
                f"{p['images_per_sec']:,.0f} per run |")
  return rows


def main(argv: List[str]) -> int:
  out = pathlib.Path(argv[0])
  env = _load(out / "env.json") or {}
  print(f"# GPU check: {env.get('device', '?')} ({env.get('platform', '?')}), jax {env.get('jax', '?')}, "
        f"flax {env.get('flax', '?')}, optax {env.get('optax', '?')}, orbax {env.get('orbax', '?')}, "
        f"commit {env.get('commit', '?')}\n")
  for title, rows in (("Step throughput (resnet-jax bench)", bench_rows(out)), ("Training loop", loop_rows(out)),
                      ("Full schedule", train_rows(out))):
    if rows:
      print(f"## {title}\n")
      print("\n".join(rows) + "\n")
  status = out / "status.txt"
  if status.is_file():
    print("## Steps\n\n" + "\n".join(f"- {line}" for line in status.read_text().splitlines()))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
