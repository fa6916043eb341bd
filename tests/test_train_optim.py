"""Learning-rate schedules, SGD with coupled/decoupled weight decay, masks (no data needed)."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import resnet_jax as rj

from resnet_jax.train import optim


def _config(**schedule) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.global_batch_size = 128
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
      weight_decay_mode="coupled", weight_decay_exclude=""))
  c.schedule = ml_collections.ConfigDict(dict(
      name="step", reference_batch_size=0, unit="steps", boundaries=(32000, 48000),
      decay_factor=0.1, warmup_length=0.0, warmup_mode="constant", warmup_learning_rate=0.01))
  c.schedule.update(schedule)
  return c


def _lr(schedule, step):
  return float(schedule(jnp.asarray(step)))


def test_paper_cifar_step_schedule():
  s = optim.create_learning_rate_schedule(_config(), steps_per_epoch=390, num_train_steps=64000)
  assert [_lr(s, t) for t in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_resnet110_warmup_then_back_to_point_one():
  s = optim.create_learning_rate_schedule(_config(warmup_length=400.0), 390, 64000)
  assert [_lr(s, t) for t in (0, 399, 400, 32000)] == pytest.approx([0.01, 0.01, 0.1, 0.01])


def test_epoch_boundaries_imagenet_every_30():
  c = _config(unit="epochs", boundaries=(30.0, 60.0))
  s = optim.create_learning_rate_schedule(c, steps_per_epoch=5005, num_train_steps=90 * 5005)
  assert [_lr(s, t) for t in (0, 30 * 5005 - 1, 30 * 5005, 60 * 5005)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.001])


def test_linear_scaling_rule_with_linear_warmup_and_cosine():
  c = _config(name="cosine", reference_batch_size=256, warmup_length=5.0, unit="epochs",
              warmup_mode="linear", warmup_learning_rate=0.0)
  c.global_batch_size = 1024
  s = optim.create_learning_rate_schedule(c, steps_per_epoch=100, num_train_steps=1000)
  assert optim.peak_learning_rate(c) == pytest.approx(0.4)
  assert _lr(s, 0) == pytest.approx(0.0)
  assert _lr(s, 250) == pytest.approx(0.2)
  assert _lr(s, 500) == pytest.approx(0.4)
  assert _lr(s, 750) == pytest.approx(0.2, rel=1e-5)
  assert _lr(s, 1000) == pytest.approx(0.0, abs=1e-7)


def test_bad_schedule_name_is_one_line_error():
  with pytest.raises(ValueError, match=r"schedule.name='steps' is not one of \('step'"):
    rj.train.validate(rj.configs.load("cifar10_resnet20:smoke", {"schedule.name": "steps"}))


def _two_updates(config, params, grads):
  tx = optim.create_optimizer(config, optax.constant_schedule(0.1))
  opt_state = tx.init(params)
  for _ in range(2):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_coupled_l2_matches_torch_sgd_and_differs_from_decoupled():
  params = {"conv": {"kernel": jnp.array([1.0, -2.0])}, "bn": {"scale": jnp.array([3.0])}}
  grads = {"conv": {"kernel": jnp.array([0.5, 0.5])}, "bn": {"scale": jnp.array([0.0])}}
  lr, m, wd = 0.1, 0.9, 1e-4
  # torch.optim.SGD(weight_decay=wd, momentum=m): d = g + wd·w; v = m·v + d; w -= lr·v.
  w, v = np.array([1.0, -2.0]), np.zeros(2)
  for _ in range(2):
    v = m * v + (0.5 + wd * w)
    w = w - lr * v
  coupled = _two_updates(_config(), params, grads)
  np.testing.assert_allclose(coupled["conv"]["kernel"], w, rtol=1e-6)
  decoupled = _two_updates(_decoupled(), params, grads)
  # Decoupled: v = m·v + g; w -= lr·(v + wd·w).
  w2, v2 = np.array([1.0, -2.0]), np.zeros(2)
  for _ in range(2):
    v2 = m * v2 + 0.5
    w2 = w2 - lr * (v2 + wd * w2)
  np.testing.assert_allclose(decoupled["conv"]["kernel"], w2, rtol=1e-6)
  assert not np.allclose(coupled["conv"]["kernel"], decoupled["conv"]["kernel"], rtol=0, atol=1e-9)


def _decoupled():
  c = _config()
  c.optimizer.weight_decay_mode = "decoupled"
  return c


def test_weight_decay_mask_skips_bn_and_biases():
  c = _config()
  c.optimizer.weight_decay = 0.5
  c.optimizer.weight_decay_exclude = r"(bias|scale)$"
  params = {"conv": {"kernel": jnp.ones(2)}, "bn": {"scale": jnp.ones(1), "bias": jnp.ones(1)}}
  zero = jax.tree.map(jnp.zeros_like, params)
  out = _two_updates(c, params, zero)
  assert float(out["bn"]["scale"][0]) == 1.0 and float(out["bn"]["bias"][0]) == 1.0
  assert float(out["conv"]["kernel"][0]) < 1.0
  mask = optim.weight_decay_mask(params, r"(bias|scale)$")
  assert mask == {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False}}


def test_scaled_learning_rates_are_torchs_parameter_groups():
  """Fixup's CIFAR code: SGD([{biases and scales, lr/10}, {the rest, lr}], momentum, weight_decay);
  torch.optim.SGD per group: d = g + wd·w; v = m·v + d; w -= lr_group·v."""
  c = _config()
  c.optimizer.scaled_learning_rate_params = r"bias|scale"
  c.optimizer.scaled_learning_rate_factor = 0.1
  params = {"conv": {"kernel": jnp.array([1.0, -2.0])}, "unit": {"bias1a": {"bias": jnp.array(0.5)}},
            "head": {"bias": jnp.array([0.25])}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  out = _two_updates(c, params, grads)
  for path, lr in ((("conv", "kernel"), 0.1), (("unit", "bias1a", "bias"), 0.01), (("head", "bias"), 0.01)):
    w, v = np.asarray(functools.reduce(dict.get, path, params), np.float64), 0.0
    for _ in range(2):
      v = 0.9 * v + 0.5 + 1e-4 * w
      w = w - lr * v
    np.testing.assert_allclose(functools.reduce(dict.get, path, out), w, rtol=1e-6)
