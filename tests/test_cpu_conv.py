"""Canonical convolution gradients (train/cpu_conv.py) and K steps per dispatch == K single steps."""
import functools
import re
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resnet_jax import train as rt
from resnet_jax.configs import base
from resnet_jax.data import augment
from resnet_jax.runtime import cpu_conv
from resnet_jax.train import mesh as mesh_lib
from resnet_jax.train import optim
from resnet_jax.train import state as state_lib
from resnet_jax.train import step as step_lib

CANONICAL = "b01f_01io->b01f"


@pytest.mark.parametrize("size,cin,cout,kernel,stride,padding,dilation,groups", [
    (8, 4, 6, 3, 1, "SAME", 1, 1),
    (9, 4, 6, 3, 2, ((1, 1), (1, 1)), 1, 1),     # a strided 3x3 (ResNet downsampling)
    (8, 4, 8, 1, 2, "VALID", 1, 1),              # projection shortcut
    (10, 6, 9, 3, 2, ((1, 0), (2, 1)), 2, 3),    # asymmetric padding, dilation, groups
    (16, 3, 8, 7, 2, ((3, 3), (3, 3)), 1, 1),    # the ImageNet stem
])
def test_gradients_equal_jax_rules(size, cin, cout, kernel, stride, padding, dilation, groups):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, size, size, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, cin // groups, cout)), jnp.float32)
  kwargs = dict(window_strides=(stride, stride), padding=padding, rhs_dilation=(dilation, dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
  y_ref, vjp_ref = jax.vjp(lambda a, b: lax.conv_general_dilated(a, b, **kwargs), x, w)
  y, vjp = jax.vjp(lambda a, b: cpu_conv.conv_general_dilated(a, b, **kwargs), x, w)
  g = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)
  np.testing.assert_array_equal(y, y_ref)
  for ours, ref in zip(vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def _setup(**overrides):
  config = base.base_config()
  config.model.update({"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 16), "stem_width": 4})
  config.global_batch_size = 16
  config.bn.ghost_batch_size = 8
  config.update(overrides)
  mesh = mesh_lib.create_mesh(jax.devices()[:1])
  model = rt.build.model(config, 10)
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 100, 1000))
  state = state_lib.create_train_state(model, tx, mesh, (32, 32, 3), 0)
  return config, mesh, model, tx, state


# The real CIFAR preprocessing: the step's random crop and flip depend on the step number.
PREPROCESS = functools.partial(augment.cifar_preprocess, mean=np.full((3,), 0.5, np.float32),
                               std=np.full((3,), 0.25, np.float32), augment=True, padding=4)


def _batches(k, b=16):
  rng = np.random.default_rng(1)
  return {"image": jnp.asarray(rng.integers(0, 256, (k, b, 32, 32, 3)), jnp.uint8),
          "label": jnp.asarray(rng.integers(0, 10, (k, b)), jnp.int32)}


K = 3


@pytest.fixture(scope="module")
def steps():
  """A tiny network's single step and its K-step dispatch, compiled once for the module."""
  config, mesh, model, tx, state = _setup()
  single = rt.make_train_step(model, tx, config, mesh, PREPROCESS, 10)
  multi = rt.make_train_step(model, tx, config, mesh, PREPROCESS, 10, steps_per_call=K)
  sums = step_lib.new_metrics(step_lib.zero_train_metrics, mesh)
  return mesh, state, single, multi.lower(state, sums, _batches(K)).compile()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's convolution layouts")
def test_scanned_step_has_only_canonical_convolutions_on_cpu(steps):
  hlo = steps[3].as_text()
  labels = re.findall(r"convolution\(.*?dim_labels=([^,\s]+)", hlo)
  assert len(labels) >= 9  # forward, input- and kernel-gradient of each of the 3+ convolutions
  assert set(labels) == {CANONICAL}, sorted(set(labels))


def test_k_steps_per_dispatch_equal_k_single_steps(steps):
  mesh, state0, single, multi = steps
  batches = _batches(K)
  copy = lambda tree: jax.tree.map(jnp.copy, tree)  # the steps donate their inputs
  state, sums = copy(state0), step_lib.new_metrics(step_lib.zero_train_metrics, mesh)
  for i in range(K):
    state, sums = single(state, sums, jax.tree.map(lambda x: x[i], batches))
  scanned, scanned_sums = multi(copy(state0), step_lib.new_metrics(step_lib.zero_train_metrics, mesh),
                                batches)
  assert int(scanned.step) == int(state.step) == K and int(scanned_sums["steps"]) == K
  for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(scanned))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(sums["loss"]), float(scanned_sums["loss"]), rtol=1e-6)
  assert float(sums["error"]) == float(scanned_sums["error"])


def test_model_convolutions_are_rewritten_only_on_cpu_and_only_flax_convs():
  config = base.base_config()
  config.model.update({"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 16), "stem_width": 4})
  model = rt.build.model(config, 10)
  cpu_model, ok = cpu_conv.for_platform(model, "cpu")
  assert ok and cpu_model.conv.keywords["conv_general_dilated"] is cpu_conv.conv_general_dilated
  assert cpu_conv.for_platform(model, "gpu") == (model, True)
  with jax.threefry_partitionable(False):  # compiles the initialisers ~5x faster on CPU
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  apply = lambda m: jax.jit(m.apply)(variables, x)
  np.testing.assert_array_equal(apply(model), apply(cpu_model))
  custom = model.clone(conv=lambda *a, **k: nn.Conv(*a, use_bias=False, **k))
  assert cpu_conv.with_canonical_gradients(custom) == (custom, False)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the warning is about XLA:CPU")
def test_scan_with_an_unrewritable_conv_warns_instead_of_running_slowly_in_silence():
  config = base.base_config()
  config.model.update({"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 16), "stem_width": 4})
  mesh = mesh_lib.create_mesh(jax.devices()[:1])
  model = rt.build.model(config, 10)
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 100, 1000))
  custom = model.clone(conv=lambda *a, **k: nn.Conv(*a, use_bias=False, **k))
  with pytest.warns(UserWarning, match="steps_per_dispatch=1 on CPU"):
    rt.make_train_step(custom, tx, config, mesh, PREPROCESS, 10, steps_per_call=2)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rt.make_train_step(model, tx, config, mesh, PREPROCESS, 10, steps_per_call=2)
