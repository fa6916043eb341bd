"""`resnet-jax` subcommands: train/eval end to end, config overrides and errors, models, prepare."""
import json
import pathlib

import pytest

from resnet_jax import cli
from resnet_jax.data import testing as data_testing

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "cifar10_resnet20.py") + ":smoke"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
  tmp = tmp_path_factory.mktemp("cli")
  source = data_testing.write_cifar10_binary(tmp / "src", num_train_per_batch=32, num_test=30, seed=1)
  assert cli.main(["prepare", "cifar10", "--source", str(source), "--data-dir", str(tmp / "tfds"),
                   "--allow-partial"]) == 0
  return tmp / "tfds"


def test_train_then_eval_json(data_dir, tmp_path, capsys):
  workdir = tmp_path / "run"
  rc = cli.main(["train", "--config", SMOKE, "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
                 "--config.data.train_split=train", "--config.data.eval_split=test",
                 "--config.num_steps=6", "--config.log_every_steps=3", "--config.eval_batch_size=16",
                 "--config.optimizer.learning_rate=0.05", "--config.bn.mode=ghost",
                 "--config.bn.ghost_batch_size=8", "--config.steps_per_dispatch=3"])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "step 3/6 | epoch 0.60 | loss" in out and "lr 0.05 |" in out and "img/s | ETA" in out
  assert "| error " in out and "30 images of test" in out and "finished at step 6: error" in out
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["optimizer"]["learning_rate"] == 0.05 and saved["bn"]["mode"] == "ghost"

  assert cli.main(["eval", "--workdir", str(workdir), "--json"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["step"] == 6 and result["num_examples"] == 30
  assert 0.0 <= result["top5_error"] <= result["error"] <= 100.0


@pytest.mark.parametrize("flag, message", [
    ("--config.optimizer.learning_rat=0.05", "unknown config field 'optimizer.learning_rat'; did you mean "
                                             "optimizer.learning_rate"),  # the closest first
    ("--config.optimiser.momentum=0.5", "unknown config field 'optimiser.momentum'; did you mean "
                                        "optimizer.momentum"),
    ("--config.bn.mode=sync", "bn.mode='sync' is not one of ('global', 'per_device', 'ghost')"),
    ("--config.num_epochs=3", "exactly one of num_steps=20 and num_epochs=3.0 must be positive"),
    ("--config.model.num_classes=100", "model.num_classes cannot be set: it comes from the dataset"),
    ("--config.model.dtype=bfloat16", "model.dtype cannot be set: set the top-level --config.dtype"),
    ("--config.model.norm_options.group_size=8", "model.norm_options.group_size cannot be set"),
    ("--config.num_steps=many", "num_steps"),
])
def test_config_errors_are_one_line(flag, message, tmp_path, capsys):
  assert cli.main(["train", "--config", SMOKE, "--workdir", str(tmp_path), flag]) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1, err


def test_any_model_field_can_be_overridden(data_dir, tmp_path, capsys):
  # The smoke config names only a few ResNet fields; `shortcut`/`unit_order` are still settable.
  workdir = tmp_path / "gate"
  rc = cli.main(["train", "--config", SMOKE, "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
                 "--config.data.train_split=train", "--config.data.eval_split=test",
                 "--config.num_steps=2", "--config.eval_batch_size=16",
                 "--config.model.shortcut=gate", "--config.model.zero_init_residual", "true",
                 "--config.model.unit_order=full_preact"])
  assert rc == 0, capsys.readouterr().err
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["shortcut"] == "gate" and saved["model"]["zero_init_residual"] is True
  assert saved["model"]["unit_order"] == "full_preact"


def test_shortcut_options_are_set_one_by_one(data_dir, tmp_path, capsys):
  workdir = tmp_path / "options"
  rc = cli.main(["train", "--config", SMOKE, "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
                 "--config.data.train_split=train", "--config.data.eval_split=test",
                 "--config.num_steps=2", "--config.eval_batch_size=16", "--config.model.shortcut=scale",
                 "--config.model.shortcut_options.scale", "0.25", "--config.model.shortcut_options.downsample=B"])
  assert rc == 0, capsys.readouterr().err
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["shortcut_options"] == {"scale": 0.25, "downsample": "B"}
  rc = cli.main(["train", "--config", SMOKE, "--workdir", str(tmp_path / "bad"),
                 "--config.model.shortcut_options.rate=0.5"])
  err = capsys.readouterr().err
  assert rc == 2 and "shortcut_options 'rate' does not apply to shortcut='A'" in err, err


def test_seeds_train_one_run_each_packed_and_a_time_limit_stops_them(data_dir, tmp_path, capsys):
  flags = ["train", "--config", SMOKE, "--workdir", str(tmp_path / "runs"), f"--config.data.data_dir={data_dir}",
           "--config.data.train_split=train", "--config.data.eval_split=test", "--config.eval_batch_size=16",
           "--config.num_steps=12", "--config.log_every_steps=2", "--seeds", "0", "1", "--pack", "on"]
  assert cli.main(flags + ["--time-limit", "0s"]) == 0
  out = capsys.readouterr().out
  assert "2 runs (seeds 0 1) in" in out and "packed in one program" in out
  assert "[seed0] stopped at step 1 (time limit)" in out and "0 of 2 runs finished; run the same command" in out
  assert cli.main(flags) == 0
  out = capsys.readouterr().out
  assert "[seed0] finished at step 12" in out and "[seed1] finished at step 12" in out and "runs finished" not in out
  for seed in (0, 1):
    saved = json.loads((tmp_path / "runs" / f"seed{seed}" / "config.json").read_text())
    assert saved["seed"] == seed
  # One run stopped by the limit says how to continue once (no "0 of 1 runs finished").
  one = [f if f != str(tmp_path / "runs") else str(tmp_path / "one") for f in flags[:flags.index("--seeds")]]
  assert cli.main(one + ["--time-limit", "0s"]) == 0
  out = capsys.readouterr().out
  assert "time limit reached: saved step 1" in out and "runs finished" not in out
  assert cli.main(["train", "--config", SMOKE, "--workdir", str(tmp_path), "--time-limit", "ten minutes"]) == 2
  assert "--time-limit: time limit 'ten minutes' is not a duration" in capsys.readouterr().err


def test_bad_model_field_value_is_one_line(data_dir, tmp_path, capsys):
  rc = cli.main(["train", "--config", SMOKE, "--workdir", str(tmp_path), f"--config.data.data_dir={data_dir}",
                 "--config.data.train_split=train", "--config.data.eval_split=test",
                 "--config.model.shortcut=D"])
  err = capsys.readouterr().err
  assert rc == 2 and "unknown shortcut 'D'" in err and "gate" in err and len(err.strip().splitlines()) == 1, err


def test_config_by_name(data_dir, tmp_path, capsys):
  """`--config NAME:smoke` finds the shipped config; `--noconfig.FIELD` is absl's boolean form."""
  workdir = tmp_path / "named"
  rc = cli.main(["train", "--config", "cifar10_resnet20:smoke", "--workdir", str(workdir),
                 f"--config.data.data_dir={data_dir}", "--config.data.train_split=train",
                 "--config.data.eval_split=test", "--config.num_steps=2", "--config.eval_batch_size=16",
                 "--noconfig.async_checkpoints"])
  assert rc == 0, capsys.readouterr().err
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["name"] == "cifar_resnet20" and saved["async_checkpoints"] is False
  assert cli.main(["train", "--config", "cifar10_resnet21", "--workdir", str(workdir)]) == 2
  assert "unknown config 'cifar10_resnet21' (did you mean" in capsys.readouterr().err


def test_unknown_variant_and_missing_workdir(tmp_path, capsys):
  assert cli.main(["train", "--config", SMOKE + "x", "--workdir", str(tmp_path)]) == 2
  assert "unknown config variant 'smokex'" in capsys.readouterr().err
  assert cli.main(["train", "--config", SMOKE]) == 2
  assert "--workdir is required" in capsys.readouterr().err
  assert cli.main(["eval", "--workdir", str(tmp_path / "nothing")]) == 2
  assert "nothing the --workdir of a `resnet-jax train` run?" in capsys.readouterr().err


def test_models_lists_params_and_macs(capsys):
  assert cli.main(["models", "--filter", "cifar_resnet20"]) == 0
  out = capsys.readouterr().out
  # He et al. 2015, Table 6: 0.27M parameters; 40.6M multiply-adds (paper-results.md, CALC).
  assert "cifar_resnet20" in out and "269,722" in out and "40,551,040" in out


def test_train_help_lists_options_and_config_fields(capsys):
  assert cli.main(["train", "--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: resnet-jax train") and "--workdir WORKDIR" in out
  assert "  optimizer.learning_rate = 0.1\n" in out and "  num_steps = 64000\n" in out
  listed = out.split("--config.model.FIELD:")[1]
  assert listed.startswith(" act, ") and " block," in listed and "num_classes" not in listed
  # With a config (and overrides): that config's values.
  assert cli.main(["train", "--config", SMOKE, "--config.num_steps=7", "-h"]) == 0
  out = capsys.readouterr().out
  assert "  num_steps = 7\n" in out and "  global_batch_size = 32\n" in out
  assert cli.main(["train", "--config", "cifar10_resnet21", "--help"]) == 2
  captured = capsys.readouterr()
  assert captured.out == "" and "unknown config 'cifar10_resnet21'" in captured.err


def test_help_from_the_command_line_neither_restarts_nor_prints_a_banner():
  import os, subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  env.pop("RESNET_JAX_ALLOCATOR_ACTIVE", None)
  out = subprocess.run([sys.executable, "-m", "resnet_jax.cli", "train", "--help"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=True).stdout
  assert out.startswith("usage: resnet-jax train"), out[:200]
