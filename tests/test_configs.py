"""Every experiment config loads, validates, names a registered network and has a smoke variant."""
import pathlib

import pytest

from resnet_jax import configs
from resnet_jax import models
from resnet_jax import train as rt
from resnet_jax.train import optim

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = configs.names()
REQUIRED = (
    [f"cifar10_resnet{d}" for d in (20, 32, 44, 56, 110, 1202)]
    + [f"cifar10_plain{d}" for d in (20, 32, 44, 56)]
    + [f"cifar{n}_preact_resnet{d}" for n in (10, 100) for d in (164, 1001)]
    + [f"cifar{n}_resnext29_{c}x64d" for n in (10, 100) for c in (8, 16)]
    + [f"imagenet_resnet{d}" for d in (18, 34, 50, 101, 152)]
    + [f"imagenet_plain{d}" for d in (18, 34)]
    + ["imagenet_resnext50_32x4d", "imagenet_resnext101_32x4d"])


def _load(name, arg=None):
  return configs.load(f"{name}:{arg}" if arg else name)


def test_repository_configs_folder_is_the_package_folder():
  """`configs/` in the repository and `resnet_jax/configs/` are one source of truth."""
  assert (ROOT / "configs").resolve() == configs.HERE
  assert sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem not in ("base", "__init__")) == NAMES


def test_every_paper_experiment_has_a_config():
  assert set(REQUIRED) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_and_smoke_variant(name):
  full, smoke = _load(name), _load(name, "smoke")
  for config in (full, smoke):
    rt.validate(config)
    assert config.model.name in models.names()
    rt.build.model(config, 10)  # every field is a valid ResNet field
  assert smoke.model.name == full.model.name
  assert smoke.num_steps <= 20 and smoke.global_batch_size <= 32
  assert set(full.keys()) == set(smoke.keys())


def _lr_at(config, step, steps_per_epoch):
  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch,
                                                 rt.num_train_steps(config, steps_per_epoch))
  return float(schedule(step))


def test_paper_recipes():
  c = _load("cifar10_resnet20")   # He et al. 2015 §4.2
  assert (c.global_batch_size, c.optimizer.momentum, c.optimizer.weight_decay) == (128, 0.9, 1e-4)
  assert c.num_steps == 64000 and tuple(c.schedule.boundaries) == (32000, 48000)
  assert c.optimizer.weight_decay_mode == "coupled" and c.data.name == "cifar10"
  for name in ("cifar10_resnet110", "cifar10_preact_resnet1001", "cifar100_preact_resnet1001"):
    c = _load(name)
    assert [_lr_at(c, s, 390) for s in (0, 399, 400)] == pytest.approx([0.01, 0.01, 0.1])
  assert _lr_at(_load("cifar10_resnet56"), 0, 390) == pytest.approx(0.1)
  c = _load("cifar100_resnext29_8x64d")   # Xie et al. 2017, App. A
  assert c.optimizer.weight_decay == 5e-4 and c.num_epochs == 300 and c.data.name == "cifar100"
  assert [_lr_at(c, e * 390, 390) for e in (149, 150, 225)] == pytest.approx([0.1, 0.01, 0.001])
  c = _load("imagenet_resnet50")          # ÷10 every 30 epochs, batch 256
  assert c.global_batch_size == 256 and c.num_epochs == 90
  assert [_lr_at(c, e * 5004, 5004) for e in (29, 30, 60, 89)] == pytest.approx([0.1, 0.01, 0.001, 0.001])
  c = _load("imagenet_resnext50_32x4d")   # 100 epochs (R-RX code), ÷10 at 30, 60, 90
  assert [_lr_at(c, e * 5004, 5004) for e in (29, 30, 60, 90)] == pytest.approx([0.1, 0.01, 0.001, 0.0001])


def test_apply_overrides_accepts_any_model_field_and_rejects_typos():
  from resnet_jax.train import config as config_lib
  c = _load("cifar10_resnet110")
  assert configs.apply_overrides is config_lib.apply_overrides
  out = config_lib.apply_overrides(c, {"model.shortcut": "gate", "schedule.boundaries": [100, 200]})
  assert out.model.shortcut == "gate" and out.schedule.boundaries == (100, 200)
  assert "shortcut" not in c.model  # the original is untouched
  rt.build.model(out, 10)
  assert config_lib.apply_overrides(c, {"train.num_steps": 100}).num_steps == 100
  with pytest.raises(config_lib.ConfigError, match="model.shortcutt"):
    config_lib.apply_overrides(c, {"model.shortcutt": "gate"})


def test_load_by_name_path_and_smoke_with_overrides(tmp_path):
  by_path = configs.load(f"{configs.path('cifar10_resnet56')}:smoke")
  assert by_path.to_dict() == configs.load("cifar10_resnet56:smoke").to_dict()
  c = configs.load("cifar10_resnet20", overrides=["optimizer.learning_rate=0.05", "model.shortcut=gate",
                                                   "model.stage_sizes=(1, 1, 1)", "async_checkpoints=false"])
  assert (c.optimizer.learning_rate, c.model.shortcut, c.model.stage_sizes, c.async_checkpoints) == (
      0.05, "gate", (1, 1, 1), False)
  # A mapping with strings parses them the same way; Python values are taken as they are.
  d = configs.load("cifar10_resnet20", overrides={"optimizer.learning_rate": "0.05", "model.shortcut": "gate",
                                                  "model.stage_sizes": (1, 1, 1), "async_checkpoints": "false"})
  assert d.to_dict() == c.to_dict()
  # A user's own config file next to its own base module.
  (tmp_path / "my_base.py").write_text("WIDTHS = (8, 16, 32)\n")
  (tmp_path / "mine.py").write_text(
      "import my_base\nfrom resnet_jax.configs import base\n"
      "def get_config(arg=None):\n  c = base.cifar_resnet_config('cifar_resnet20', arg=arg)\n"
      "  c.model.stage_widths = my_base.WIDTHS\n  return c\n")
  assert configs.load(str(tmp_path / "mine.py")).model.stage_widths == (8, 16, 32)


@pytest.mark.parametrize("overrides,message", [
    ({"model.num_classes": 100}, "model.num_classes cannot be set: it comes from the dataset"),
    ({"model.dtype": "bfloat16"}, "model.dtype cannot be set: set the top-level --config.dtype"),
    ({"model.norm_options.group_size": 32}, "model.norm_options.group_size cannot be set: set --config.bn.mode=ghost"),
    ({"model.norm_options.axis_name": "data"}, "model.norm_options.axis_name cannot be set: set --config.bn.mode"),
    ({"model.norm_options": {"unbiased_variance": False}}, "model.norm_options.unbiased_variance cannot be set"),
    ({"num_stepz": 3}, "unknown config field 'num_stepz'; did you mean num_steps"),
    ({"num_steps": "abc"}, "num_steps=abc: invalid literal for int"),
    ({"num_steps": 1.5}, "cannot be casted to type <class 'int'>"),
    (["num_steps"], "override 'num_steps' is not KEY=VALUE"),
])
def test_bad_overrides_are_one_line_config_errors(overrides, message):
  with pytest.raises(configs.ConfigError) as info:
    configs.load("cifar10_resnet20", overrides)
  assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_config_names_near_matches():
  with pytest.raises(configs.ConfigError, match=r"unknown config 'cifar10_resnet21'.*did you mean.*cifar10_resnet20"):
    configs.load("cifar10_resnet21")
  with pytest.raises(configs.ConfigError, match=r"config file 'nowhere.py' does not exist"):
    configs.load("nowhere.py")
