"""One train step and one eval step of a tiny network on one device (synthetic arrays)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.configs import base
from resnet_jax import train as rt
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.train import optim
from resnet_jax.train import state as state_lib
from resnet_jax.train import step as step_lib

B = 16


def _preprocess(images, rng, train):
  del rng, train
  return images.astype(jnp.float32) / 255.0 - 0.5


def _setup(**overrides):
  config = base.base_config()
  config.model.update({"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 16), "stem_width": 4})
  config.global_batch_size = B
  config.bn.ghost_batch_size = B // 2  # the paper's two BatchNorm groups per batch
  for key, value in overrides.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  mesh = mesh_lib.create_mesh()
  model = rt.build.model(config, 10)
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 100, 1000))
  state = state_lib.create_train_state(model, tx, mesh, (32, 32, 3), 0)
  return config, mesh, model, tx, state


def _batch(seed=0, n=B):
  rng = np.random.RandomState(seed)
  return {"image": jnp.asarray(rng.randint(0, 256, (n, 32, 32, 3)), jnp.uint8),
          "label": jnp.asarray(rng.randint(0, 10, (n,)), jnp.int32)}


def test_one_train_step_and_one_eval_step():
  config, mesh, model, tx, state = _setup()
  before = jax.device_get(state.params)
  stats_before = jax.device_get(state.batch_stats)
  train_step = rt.make_train_step(model, tx, config, mesh, _preprocess, 10)
  sums = jax.device_put(step_lib.zero_train_metrics(), mesh_lib.replicated(mesh))
  state, sums = train_step(state, sums, _batch())
  assert int(state.step) == 1 and int(sums["steps"]) == 1
  assert int(sums["first_nonfinite_step"]) == -1
  assert 1.0 < float(sums["loss"]) < 5.0 and 0.0 <= float(sums["error"]) <= 1.0
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, jax.device_get(state.params))
  assert all(jax.tree.leaves(changed))
  assert not np.array_equal(jax.tree.leaves(stats_before)[0], jax.tree.leaves(state.batch_stats)[0])

  eval_step = rt.make_eval_step(model, mesh, _preprocess)
  batch = _batch(1)
  mask = np.arange(B) < 10   # a padded last batch: 10 real examples
  zero = rt.zero_eval_metrics()
  full = eval_step(state.params, state.batch_stats, zero, {**batch, "mask": jnp.ones(B, bool)})
  part = eval_step(state.params, state.batch_stats, rt.zero_eval_metrics(),
                   {**batch, "mask": jnp.asarray(mask)})
  assert float(full["count"]) == B and float(part["count"]) == 10
  logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                       _preprocess(batch["image"], None, False), train=False)
  wrong = np.asarray(jnp.argmax(logits, -1) != batch["label"])
  assert float(part["errors"]) == wrong[:10].sum()
  assert float(part["top5_errors"]) <= float(part["errors"])


def test_nonfinite_loss_is_recorded_with_its_step():
  config, mesh, model, tx, state = _setup()
  train_step = rt.make_train_step(model, tx, config, mesh,
                                  lambda x, r, t: _preprocess(x, r, t) * jnp.inf, 10)
  sums = jax.device_put(step_lib.zero_train_metrics(), mesh_lib.replicated(mesh))
  state, sums = train_step(state, sums, _batch())
  assert int(sums["first_nonfinite_step"]) == 0


def test_bfloat16_compute_keeps_float32_params_and_statistics():
  config, mesh, model, tx, state = _setup(dtype="bfloat16", label_smoothing=0.1)
  train_step = rt.make_train_step(model, tx, config, mesh, _preprocess, 10)
  sums = jax.device_put(step_lib.zero_train_metrics(), mesh_lib.replicated(mesh))
  state, sums = train_step(state, sums, _batch())
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree.leaves(state.batch_stats)} == {jnp.dtype(jnp.float32)}
  assert np.isfinite(float(sums["loss"]))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  x = _preprocess(_batch()["image"], None, False)
  config.dtype = "float32"
  low, high = model.apply(variables, x, train=False), rt.build.model(config, 10).apply(variables, x, train=False)
  assert not np.array_equal(low, high)          # the convolutions ran in bfloat16...
  np.testing.assert_allclose(low, high, atol=0.1)  # ...on the same float32 parameters


def test_label_smoothing_raises_the_loss_of_a_confident_prediction():
  logits = jnp.array([[10.0, -10.0, -10.0]])
  labels = jnp.array([0])
  plain = float(step_lib.cross_entropy(logits, labels, 3, 0.0)[0])
  smooth = float(step_lib.cross_entropy(logits, labels, 3, 0.1)[0])
  assert plain < 1e-6 < smooth


def test_bn_mode_and_ghost_size_errors_name_the_value():
  config = base.base_config()
  config.bn.mode = "sync"
  with pytest.raises(ValueError, match=r"bn.mode='sync' is not one of"):
    rt.validate(config)
  config.bn.mode = "ghost"
  config.bn.ghost_batch_size = 48
  with pytest.raises(ValueError, match="ghost_batch_size=48 must be positive and divide global_batch_size=128"):
    rt.validate(config)
