"""`resnet-jax bench`: the report's contents, the minimal reference network, one-line errors."""
import json
import math
import re

import jax
import jax.numpy as jnp
import pytest

from resnet_jax import cli
from resnet_jax import models
from resnet_jax.bench import minimal


def test_bench_real_data_side_by_side(data_dir, capsys):
  code = cli.main(["bench", "--config", "cifar10_resnet20:smoke", "--data", "real", "--data-dir",
                   str(data_dir), "--steps", "2", "--windows", "2", "--warmup", "1",
                   "--steps-per-dispatch", "1", "2", "--compare-minimal", "--json",
                   "--set", "data.train_split=train", "data.eval_split=test"])
  out = capsys.readouterr().out
  assert code == 0, out
  r = json.loads(out.strip().splitlines()[-1])
  names = {"step K=1", "step K=2", "minimal flax", "loop/host K=1", "loop/device K=1", "loop/host K=2",
           "loop/device K=2"}
  assert set(r["results"]) == names
  for x in r["results"].values():
    assert len(x["img_per_s_windows"]) == 2 and x["img_per_s"] > 0
    assert x["ms_per_step_min"] <= x["ms_per_step"] <= x["ms_per_step_max"] and x["cpu_ms_per_step"] > 0
  assert r["results"]["step K=1"]["compile_s"] > 0 and r["results"]["minimal flax"]["compile_s"] > 0
  assert set(r["ratios"]) == {"step K=2 / step K=1", "step K=1 / minimal flax", "loop/host K=1 / step K=1",
                              "loop/device K=1 / step K=1", "loop/host K=2 / step K=2",
                              "loop/device K=2 / step K=2"}
  assert all(len(x["rounds"]) == 2 for x in r["ratios"].values())
  model = models.create("cifar_resnet20", stage_sizes=(1, 1, 1), stage_widths=(4, 8, 16), stem_width=4)
  assert r["macs_per_image"] == models.flops(model, (1, 32, 32, 3))
  assert r["params"] == r["minimal_params"]  # the reference is the same network size
  step = r["results"]["step K=1"]
  assert step["tflops"] == pytest.approx(6 * r["macs_per_image"] * step["img_per_s"] / 1e12)
  assert "loop overhead over the bare step" in out and "speed step K=1 / minimal flax" in out
  assert re.search(r"the config's 20 steps (less than 10 seconds|about \d+ \w+) \(bare step\)", out), out  # "0.00 h"


def test_breakdown_times_the_step_without_each_extra(capsys):
  code = cli.main(["bench", "--config", "cifar10_resnet20:smoke", "--breakdown", "--compare-minimal",
                   "--steps", "2", "--windows", "2", "--warmup", "1", "--json"])
  out = capsys.readouterr().out
  assert code == 0, out
  r = json.loads(out.strip().splitlines()[-1])
  extras = {"step -ghost BN", "step -unbiased var", "step -augment", "step -NaN guard", "step -metrics"}
  assert set(r["results"]) == {"step K=1", "minimal flax", "without extras"} | extras
  assert set(r["breakdown"]) == extras | {"without extras"}
  # 1 - t(without) / t(full): below 1 for any positive time; its size is the benchmark's to
  # report (two steps on a loaded machine are noise), not the test's.
  assert all(math.isfinite(x["cost_of_step"]) and x["cost_of_step"] < 1.0 for x in r["breakdown"].values())
  assert "without extras / minimal flax" in r["ratios"] and "what the engine's extras cost" in out


def test_breakdown_variants_remove_one_extra_each():
  from resnet_jax import configs  # pylint: disable=g-import-not-at-top
  from resnet_jax.bench import breakdown  # pylint: disable=g-import-not-at-top
  config = configs.load("cifar10_resnet20")
  variants = breakdown.variants(config)
  assert variants["step -ghost BN"][0].bn.mode == "global" and variants["step -ghost BN"][0].data.augment
  assert not variants["step -NaN guard"][1].nonfinite_guard and variants["step -NaN guard"][1].metrics
  everything_off, switches = variants[breakdown.ALL_OFF]
  assert everything_off.bn.mode == "global" and not everything_off.bn.unbiased_variance
  assert not everything_off.data.augment and not switches.metrics and not switches.nonfinite_guard
  # An extra the config does not have is not timed: CIFAR has no lighting noise, a global-BN
  # config no ghost groups.
  assert "step -lighting" not in variants and "step -color jitter" not in variants
  assert "step -lighting" in breakdown.variants(configs.load("imagenet_resnet50"))
  assert "step -ghost BN" not in breakdown.variants(configs.load("cifar10_resnet20", {"bn.mode": "global"}))


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet56", "resnet50", "resnext50_32x4d",
                                  "resnext29_8x64d"])
def test_minimal_reference_has_the_networks_size(name):
  model = models.create(name)
  size = 32 if model.stem == "cifar" else 224
  ours = models.count_params(models.abstract_variables(model, (1, size, size, 3)))
  net = minimal.like(model)
  shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))
  assert minimal.count_params(shapes) == ours


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet51"], "unknown model 'resnet51'"),
    (["--config", "cifar10_resnet21"], "unknown config 'cifar10_resnet21'"),
    ([], "give --model NAME"),
    (["--model", "resnet50", "--data", "fake"], "--data 'fake' is not one of synthetic, real"),
    (["--model", "resnet50", "--dtype", "float16"], "--dtype 'float16' is not one of float32, bfloat16"),
    (["--model", "resnet50", "--steps", "5", "--steps-per-dispatch", "2"], "must be at least 1 and divide --steps 5"),
    (["--model", "resnet50", "--placement", "gpu"], "--placement 'gpu' is not one of both, host, device"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
  assert cli.main(["bench", *argv]) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1, err


SMOKE = ["bench", "--config", "cifar10_resnet20:smoke", "--steps", "1", "--windows", "2", "--warmup", "1",
         "--bn", "global", "--compare-torch", "--json"]


def test_compare_torch_without_torch_says_so_in_one_line(monkeypatch, capsys):
  from resnet_jax.bench import torch_reference
  monkeypatch.setattr(torch_reference, "available", lambda: "torch is not installed (test)")
  assert cli.main(SMOKE) == 0
  out = capsys.readouterr().out
  r = json.loads(out.strip().splitlines()[-1])
  assert set(r["results"]) == {"step K=1"} and r["ratios"] == {}
  assert [line for line in out.splitlines() if "--compare-torch" in line] == [
      "  --compare-torch: not timed: torch is not installed (test)"]


def test_compare_torch_times_the_same_network_in_the_same_windows(capsys):
  pytest.importorskip("torch", reason="--compare-torch needs torch (pip install -e '.[reference]')")
  assert cli.main(SMOKE) == 0
  out = capsys.readouterr().out
  r = json.loads(out.strip().splitlines()[-1])
  assert set(r["results"]) == {"step K=1", "pytorch eager"}
  assert len(r["ratios"]["step K=1 / pytorch eager"]["rounds"]) == 2
  assert r["torch_params"] == r["params"] and r["torch_note"] is None


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet50", "resnext50_32x4d", "resnext29_8x64d"])
def test_torch_reference_has_the_networks_size(name):
  pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[reference]')")
  from resnet_jax.bench import torch_reference
  model = models.create(name)
  size = 32 if model.stem == "cifar" else 224
  ours = models.count_params(models.abstract_variables(model, (1, size, size, 3)))
  assert torch_reference.count_params(torch_reference._network(minimal.like(model))) == ours
