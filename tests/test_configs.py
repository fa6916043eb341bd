"""Every experiment config loads, validates, names a registered network and has a smoke variant."""
import importlib
import pathlib

import pytest

from resnet_jax import models
from resnet_jax import train as rt
from resnet_jax.train import optim

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem not in ("base", "__init__"))
REQUIRED = (
    [f"cifar10_resnet{d}" for d in (20, 32, 44, 56, 110, 1202)]
    + [f"cifar10_plain{d}" for d in (20, 32, 44, 56)]
    + [f"cifar{n}_preact_resnet{d}" for n in (10, 100) for d in (164, 1001)]
    + [f"cifar{n}_resnext29_{c}x64d" for n in (10, 100) for c in (8, 16)]
    + [f"imagenet_resnet{d}" for d in (18, 34, 50, 101, 152)]
    + [f"imagenet_plain{d}" for d in (18, 34)]
    + ["imagenet_resnext50_32x4d", "imagenet_resnext101_32x4d"])


def _load(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def test_every_paper_experiment_has_a_config():
  assert set(REQUIRED) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_and_smoke_variant(name):
  full, smoke = _load(name), _load(name, "smoke")
  for config in (full, smoke):
    rt.validate(config)
    assert config.model.name in models.names()
    rt.build_model(config, 10)  # every field is a valid ResNet field
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
  out = config_lib.apply_overrides(c, {"model.shortcut": "gate", "schedule.boundaries": [100, 200]})
  assert out.model.shortcut == "gate" and out.schedule.boundaries == (100, 200)
  assert "shortcut" not in c.model  # the original is untouched
  rt.build_model(out, 10)
  assert config_lib.apply_overrides(c, {"train.num_steps": 100}).num_steps == 100
  with pytest.raises(config_lib.ConfigError, match="model.shortcutt"):
    config_lib.apply_overrides(c, {"model.shortcutt": "gate"})
