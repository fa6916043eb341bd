"""Canonical convolution gradients (runtime/cpu_conv.py) and K steps per dispatch == K single steps."""
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
from resnet_jax.runtime import cpu_compile, cpu_conv
from resnet_jax.runtime import mesh as mesh_lib
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


# Every kind of convolution in the model zoo, at small sizes: (image size, in, out, kernel,
# stride, padding, groups).
ZOO_CONVOLUTIONS = [
    (8, 3, 4, 3, 1, ((1, 1), (1, 1)), 1),      # CIFAR stem
    (8, 4, 4, 3, 1, ((1, 1), (1, 1)), 1),      # basic unit
    (8, 4, 8, 3, 2, ((1, 1), (1, 1)), 1),      # first 3x3 of a downsampling unit
    (8, 8, 4, 1, 1, ((0, 0), (0, 0)), 1),      # bottleneck 1x1
    (8, 4, 8, 1, 2, ((0, 0), (0, 0)), 1),      # projection shortcut (option B)
    (16, 3, 8, 7, 2, ((3, 3), (3, 3)), 1),     # ImageNet stem
    (8, 8, 8, 3, 1, ((1, 1), (1, 1)), 4),      # ResNeXt grouped 3x3
    (9, 8, 16, 3, 2, ((1, 1), (1, 1)), 4),     # ResNeXt grouped 3x3, strided, odd size
]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the train step's XLA:CPU options")
@pytest.mark.parametrize("size,cin,cout,kernel,stride,padding,groups", ZOO_CONVOLUTIONS)
def test_gradients_in_a_scan_compiled_as_the_train_step_equal_jax_rules(size, cin, cout, kernel, stride,
                                                                       padding, groups):
  """The path the CPU train step runs: `cpu_conv` inside `lax.scan`, with the step's compiler options."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, size, size, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, cin // groups, cout)), jnp.float32)
  kwargs = dict(window_strides=(stride, stride), padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=groups)
  y_ref, vjp_ref = jax.vjp(lambda a, b: lax.conv_general_dilated(a, b, **kwargs), x, w)
  gs = jnp.asarray(rng.standard_normal((2,) + y_ref.shape), jnp.float32)

  def grads(x, w, gs):
    def body(_, g):
      return None, jax.vjp(lambda a, b: cpu_conv.conv_general_dilated(a, b, **kwargs), x, w)[1](g)
    return lax.scan(body, None, gs)[1]
  options = cpu_compile.train_step_options("cpu")
  assert options  # this jaxlib accepts them; otherwise the test would compare the defaults
  dx, dw = jax.jit(grads, compiler_options=options)(x, w, gs)
  for i in range(2):
    ref_dx, ref_dw = vjp_ref(gs[i])
    np.testing.assert_allclose(dx[i], ref_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw[i], ref_dw, rtol=1e-5, atol=1e-5)


def test_train_step_options_are_for_cpu_and_leave_a_users_xla_flags_alone(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  options = cpu_compile.train_step_options("cpu")
  assert set(options) == {cpu_compile.YNN_OPTION}
  fusion_types = options[cpu_compile.YNN_OPTION].split(",")
  assert "LIBRARY_FUSION_TYPE_ELTWISE" in fusion_types
  assert "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION" not in fusion_types  # Eigen's are faster
  assert cpu_compile.train_step_options("gpu") == {} and cpu_compile.train_step_options("tpu") == {}
  monkeypatch.setenv("XLA_FLAGS", f"--{cpu_compile.YNN_OPTION}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT")
  assert cpu_compile.train_step_options("cpu") == {}


def test_an_option_this_jaxlib_rejects_falls_back_to_the_defaults_with_a_warning():
  with pytest.warns(UserWarning, match="compiles with XLA's defaults"):
    assert not cpu_compile._accepted(cpu_compile.YNN_OPTION, "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE")


def _ynn_fusion_bodies(hlo: str):
  """The fused computations that YNNPACK runs, as HLO text."""
  bodies = {m.group(1): m.group(2) for m in re.finditer(r"^%([\w.\-]+) .*?\{\n(.*?)^\}", hlo, re.M | re.S)}
  called = re.findall(r"calls=%([\w.\-]+),.*\"kind\":\"__ynn_fusion\"", hlo)
  return [bodies[name] for name in called]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's library fusions")
def test_cpu_train_step_runs_elementwise_ops_in_ynnpack(steps):
  ynn = _ynn_fusion_bodies(steps[3].as_text())
  assert any(re.search(r" (multiply|subtract|add)\(", body) and " reduce(" not in body for body in ynn)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's library fusions")
def test_train_step_options_keep_convolutions_out_of_ynnpack():
  x, w = jnp.ones((2, 4, 4, 32)), jnp.ones((3, 3, 32, 32))  # YNNPACK takes convolutions of >= 32 features
  conv = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                       dimension_numbers=("NHWC", "HWIO", "NHWC")))
  in_ynnpack = lambda options: any(" convolution(" in body for body in _ynn_fusion_bodies(
      conv.lower(x, w).compile(compiler_options=options).as_text()))
  assert in_ynnpack({cpu_compile.YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"})
  assert not in_ynnpack(cpu_compile.train_step_options("cpu"))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's compiler options")
def test_train_step_options_change_results_only_by_float_rounding(steps, monkeypatch):
  mesh, state0, single, _ = steps
  monkeypatch.setattr(cpu_compile, "train_step_options", lambda platform: {})
  config, _, model, tx, _ = _setup()
  plain = rt.make_train_step(model, tx, config, mesh, PREPROCESS, 10)
  batch = jax.tree.map(lambda x: x[0], _batches(1))
  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  sums = lambda: step_lib.new_metrics(step_lib.zero_train_metrics, mesh)
  plain = plain.lower(copy(state0), sums(), batch).compile()
  assert not any(" subtract(" in body for body in _ynn_fusion_bodies(plain.as_text()))  # two programs
  ours, _ = single(copy(state0), sums(), batch)
  reference, _ = plain(copy(state0), sums(), batch)
  for a, b, p in zip(jax.tree.leaves(jax.device_get(ours.params)), jax.tree.leaves(jax.device_get(reference.params)),
                     jax.tree.leaves(jax.device_get(state0.params))):
    np.testing.assert_allclose(a - p, b - p, rtol=1e-3, atol=1e-7)  # the update, to rounding
