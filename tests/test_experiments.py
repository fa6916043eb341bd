"""Every paper-reproduction script runs end to end in its `--smoke` mode, so none can rot.

Each script is run as a user runs it (`python experiments/NAME.py --smoke`), on a generated
CIFAR-10 in the official binary layout (640 train / 200 test images), and must print its
markdown table and write table.md, results.json and a PNG figure.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

import support
from resnet_jax.data import testing as data_testing

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cifar_source(tmp_path_factory) -> pathlib.Path:
  tmp = tmp_path_factory.mktemp("experiments")
  return data_testing.write_cifar10_binary(tmp / "src", num_train_per_batch=128, num_test=200, seed=3)


def _run(script: str, args, timeout: int = 300) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **support.FAST_COMPILE_ENV}
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, str(EXPERIMENTS / script), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("script, extra, variants", [
    ("cifar_depth.py", [], {"plain20", "plain56", "resnet20", "resnet56"}),
    ("cifar_shortcuts.py", [], {"option_A", "option_B", "option_C"}),
    ("identity_shortcuts.py", ["--only", "original", "exclusive_gate_b-6"], {"original", "exclusive_gate_b-6"}),
    ("unit_orders.py", ["--only", "original", "full_preact"], {"original", "full_preact"}),
    ("resnext_cifar.py", [], {"resnext29_8x64d"}),
    # --pack on: the variants that can share a program train packed (on a CPU too, when asked).
    ("cifar_gap.py", ["--pack", "on"], {"train_50k", "train_45k", "bn_per_gpu_64", "no_decay_bn"}),
])
def test_cifar_script_smoke(script, extra, variants, cifar_source, tmp_path):
  workdir = tmp_path / "runs"
  result = _run(script, ["--smoke", "--protocol", "test", "--workdir", str(workdir),
                         "--data-dir", str(tmp_path / "tfds"), "--cifar10-source", str(cifar_source), *extra])
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert "| variant | seeds finished |" in result.stdout and "paper (%)" in result.stdout
  summary = json.loads((workdir / "results.json").read_text())
  assert summary["budget"].startswith("smoke") and "test[:200]" in summary["protocol"]
  assert {r["variant"] for r in summary["runs"]} == variants
  for record in summary["runs"]:
    assert record["step"] == 20 and 0.0 <= record["eval"]["error"] <= 100.0
    assert record["resnet_jax"] and "commit" in record and record["device"] and record["wall_time_s"] > 0
    assert record["config"]["data"]["eval_split"] == "test[:200]"
  assert list(workdir.glob("*.png")) and (workdir / "table.md").read_text().startswith("# ")

  if script == "cifar_shortcuts.py":  # the scripts share reproduce.py's resume: one rerun checks it
    again = _run(script, ["--smoke", "--protocol", "test", "--workdir", str(workdir),
                          "--data-dir", str(tmp_path / "tfds"), "--cifar10-source", str(cifar_source), *extra])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training in" not in again.stdout and "finished earlier" in again.stdout


def test_imagenet_plan_and_smoke(tmp_path):
  plan = _run("imagenet.py", ["--plan", "--table", "3"])
  assert plan.returncode == 0, plan.stderr[-3000:]
  assert "| table3 | resnet50 | resnet50 | 25,557,032 | 3.86 | 90 |" in plan.stdout
  assert "| table3 | resnet34_C | resnet34 | 22,716,840 |" in plan.stdout
  result = _run("imagenet.py", ["--smoke", "--workdir", str(tmp_path / "runs")])
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  summary = json.loads((tmp_path / "runs" / "results.json").read_text())
  assert {r["variant"] for r in summary["runs"]} == {"plain18", "resnet34_C", "resnext50_32x4d"}
  assert all(r["step"] == 4 for r in summary["runs"])


def test_budget_flags_scale_the_schedule(tmp_path):
  from resnet_jax import configs
  from resnet_jax import reproduce as common
  args = common.parser("x", "runs").parse_args(["--steps", "8000"])
  out = common.budget_overrides(configs.load("cifar10_resnet110"), args)
  assert out == {"num_steps": 8000, "schedule.boundaries": (4000, 6000), "schedule.warmup_length": 50.0}
  args = common.parser("x", "runs").parse_args(["--scale", "0.5"])
  out = common.budget_overrides(configs.load("cifar10_resnext29_8x64d"), args)
  assert out["num_epochs"] == 150.0 and out["schedule.boundaries"] == (75.0, 112.5)
  with pytest.raises(SystemExit, match="iteration-based"):
    common.budget_overrides(configs.load("cifar10_resnext29_8x64d"),
                            common.parser("x", "runs").parse_args(["--steps", "10"]))
  bad = _run("cifar_depth.py", ["--smoke", "--set", "optimizer.learning_rat=0.1", "--workdir", str(tmp_path)])
  assert bad.returncode == 2 and "optimizer.learning_rate" in bad.stderr
