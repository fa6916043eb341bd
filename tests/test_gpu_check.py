"""experiments/gpu_check.sh runs end to end (--smoke, on the CPU) and summarises what it measured.

Device time is scarce: a script that breaks on the GPU machine wastes a lease, so its plumbing
(argument parsing, CIFAR-10 preparation, every bench and training step, the JSON and the
summary) is checked here with the tiny :smoke networks.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from resnet_jax.data import testing as data_testing

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_gpu_check_smoke_writes_every_figure(tmp_path):
  source = data_testing.write_cifar10_binary(tmp_path / "src", num_train_per_batch=200, num_test=200, seed=0)
  # --smoke has no budget and no per-step limits: however loaded the machine, every step runs.
  env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu", "RESNET_JAX_ALLOCATOR": "system"}
  out = tmp_path / "out"
  run = subprocess.run([str(ROOT / "experiments" / "gpu_check.sh"), str(out), "--smoke", "--cifar", str(source)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=3500)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  status = (out / "status.txt").read_text()
  assert status.count("rc=0") == 10 and "rc=1" not in status and "rc=2" not in status, status
  for name in ("bench_r20", "bench_r20_packed", "bench_r56", "bench_r110", "bench_r50", "bench_loop", "eval_r20_test"):
    assert json.loads((out / f"{name}.json").read_text()), name
  r20 = json.loads((out / "bench_r20.json").read_text())
  assert "minimal flax" in r20["results"] and "without extras" in r20["breakdown"]
  summary = (out / "summary.md").read_text()
  for heading in ("Step throughput", "Training loop", "Full schedule", "commit"):
    assert heading in summary, summary
  assert json.loads((out / "env.json").read_text())["platform"] == "cpu"
