"""Our jitted train step equals one PyTorch SGD step of the papers' CIFAR networks (teacher forcing).

`tests/fixtures/make_torch_step_reference.py` (torch, run once) drew each state before a
step from a seed in resnet_jax's layout, took one step with `torch.optim.SGD` on a batch
of real CIFAR-10 images, and stored the state after it. Here the same state is rebuilt,
our own train step of the paper config (`configs/cifar10_resnet20.py` and friends, with
their optimiser, schedule, weight decay and BatchNorm grouping) runs on the same batch at
the same iteration, and every BatchNorm statistic, sampled parameter and momentum entry,
each tensor's sum and norm, and the loss are compared.
"""
from __future__ import annotations

import functools
import importlib.util
import pathlib
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import configs
from resnet_jax import train as rt

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("reference_state", FIXTURES / "reference_state.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
REFERENCE = np.load(helpers.OUT)

# Our config for each reference network (the generator's NETWORKS), shrunk like the reference.
CONFIGS = {
    "resnet20": ("cifar10_resnet20", {}),
    "preact_bottleneck": ("cifar10_preact_resnet164", {"model.stage_sizes": (1, 1, 1)}),
    "resnext": ("cifar10_resnext29_8x64d", {"model.stage_sizes": (1, 1, 1), "model.stage_widths": (16, 32, 64),
                                            "model.stem_width": 16, "model.cardinality": 4,
                                            "model.bottleneck_width": 4}),
}
CASES = sorted({tuple(k.split("/")[:2]) for k in REFERENCE.files if k.count("/") >= 2 and k.endswith("/loss")})
STEPS_PER_EPOCH = 50_000 // 128


def _paths(tree, prefix):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {prefix + "/" + "/".join(str(k.key) for k in path): leaf for path, leaf in flat}


def _rebuild(tree, prefix, seed):
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  leaves = [jnp.asarray(helpers.synthetic_leaf(seed, prefix + "/" + "/".join(str(k.key) for k in path),
                                               leaf.shape), leaf.dtype) for path, leaf in flat]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _with_momentum_and_count(opt_state, momentum, count):
  """Replaces the SGD trace (momentum buffer) and the schedule's step count in our opt state."""
  def fix(node):
    if isinstance(node, optax.TraceState):
      return node._replace(trace=momentum)
    if isinstance(node, optax.ScaleByScheduleState):
      return node._replace(count=jnp.asarray(count, node.count.dtype))
    return node
  return jax.tree.map(fix, opt_state, is_leaf=lambda n: isinstance(n, (optax.TraceState, optax.ScaleByScheduleState)))


def _trace(opt_state):
  found = [n for n in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, optax.TraceState))
           if isinstance(n, optax.TraceState)]
  assert len(found) == 1
  return found[0].trace


def _entries(ours, key: str, path: str, seed: int):
  """(our entries, reference entries) of one tensor: all of it, or the reference's sample."""
  flat = np.asarray(ours, np.float64).reshape(-1)
  if f"{key}/full" in REFERENCE.files:
    return flat, REFERENCE[f"{key}/full"].reshape(-1).astype(np.float64)
  return flat[helpers.sample_indices(seed, path, flat.size)], REFERENCE[f"{key}/sample"].astype(np.float64)


@functools.lru_cache(maxsize=None)
def _program(name: str, dtype):
  """The paper config's optimiser, model, initial state and compiled train step in `dtype`,
  built once per network and dtype: every iteration of a network runs the same program
  (the step, hence the learning rate, is part of the state)."""
  config_name, overrides = CONFIGS[name]
  config = configs.load(config_name, {**overrides, "seed": 0})
  mesh = rt.create_mesh(jax.devices()[:1])
  schedule, tx = rt.build.optimizer(config, STEPS_PER_EPOCH, rt.num_train_steps(config, STEPS_PER_EPOCH))
  model = rt.build.model(config, 10).clone(dtype=dtype, param_dtype=dtype)
  state = rt.create_train_state(model, tx, mesh, (32, 32, 3), 0)
  train_step = rt.make_train_step(model, tx, config, mesh, lambda x, rng, train: x, 10)
  return schedule, tx, mesh, state, train_step


def _our_step(name: str, step: int, dtype):
  """Our train step of the paper config, from the seeded state, in `dtype` (float64: x64 mode)."""
  prefix = f"{name}/{step}"
  seed = zlib.crc32(prefix.encode())
  schedule, tx, mesh, state, train_step = _program(name, dtype)
  assert float(schedule(step)) == pytest.approx(float(REFERENCE[f"{prefix}/lr"]), rel=1e-6)
  params = _rebuild(state.params, "params", seed)
  state = state.replace(step=jnp.asarray(step, state.step.dtype), params=params,
                        batch_stats=_rebuild(state.batch_stats, "batch_stats", seed),
                        opt_state=_with_momentum_and_count(tx.init(params), _rebuild(state.params, "momentum", seed),
                                                           step))
  state = jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)  # the step may donate it
  # The inputs exactly as the reference computed them (numpy's x / 255 and XLA's differ in
  # the last bit: XLA multiplies by 1/255); `augment.normalize` is tested on its own.
  images = (REFERENCE["images"].astype(np.float32) / 255.0) - REFERENCE["pixel_mean"]
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(REFERENCE["labels"])}
  new, sums = train_step(state, rt.new_metrics(rt.zero_train_metrics, mesh), batch)
  new = jax.device_get(new)
  trees = {"params": new.params, "momentum": _trace(new.opt_state), "batch_stats": new.batch_stats}
  return float(sums["loss"]), trees, seed


def test_reference_covers_every_network_and_a_learning_rate_drop():
  assert {name for name, _ in CASES} == set(CONFIGS)
  assert ("resnet20", "32000") in CASES and float(REFERENCE["resnet20/32000/lr"]) == pytest.approx(0.01)
  assert float(REFERENCE["resnet20/31999/lr"]) == pytest.approx(0.1)


@pytest.mark.parametrize("name,step", CASES)
def test_one_step_equals_pytorch_sgd(name, step):
  """float64: our step equals PyTorch's (to 1e-11 of each tensor's largest entry; the loss
  to 1e-12). float32: the loss and BatchNorm statistics agree with the exact step to 1e-5,
  parameters and momentum to the float32 rounding level that PyTorch's float32 step shows
  as well (early-layer gradients of these nets carry ~1e-3 relative rounding error)."""
  prefix = f"{name}/{step}"
  with jax.enable_x64(True):
    loss64, trees64, seed = _our_step(name, int(step), jnp.float64)
  loss32, trees32, _ = _our_step(name, int(step), jnp.float32)
  assert loss64 == pytest.approx(float(REFERENCE[f"{prefix}/float64/loss"]), rel=1e-12)
  assert loss32 == pytest.approx(float(REFERENCE[f"{prefix}/float64/loss"]), rel=1e-5)
  ours_worst, torch_worst, worst64 = {}, {}, 0.0
  for collection in ("params", "momentum", "batch_stats"):
    for path, leaf64 in _paths(trees64[collection], collection).items():
      inner = path.split("/", 1)[1]
      exact_key, torch32_key = (f"{prefix}/{p}/{collection}/{inner}" for p in ("float64", "float32"))
      ours64, exact = _entries(leaf64, exact_key, path, seed)
      scale = max(np.abs(exact).max(), 1e-30)
      np.testing.assert_allclose(ours64, exact, rtol=0, atol=1e-11 * scale, err_msg=f"float64 {exact_key}")
      worst64 = max(worst64, np.abs(ours64 - exact).max() / scale)
      if f"{exact_key}/sum" in REFERENCE.files:
        flat = np.asarray(leaf64, np.float64).reshape(-1)
        assert flat.sum() == pytest.approx(float(REFERENCE[f"{exact_key}/sum"]), abs=1e-11 * np.abs(flat).sum())
        assert np.linalg.norm(flat) == pytest.approx(float(REFERENCE[f"{exact_key}/norm"]), rel=1e-11)
      ours32 = _entries(_paths(trees32[collection], collection)[path], exact_key, path, seed)[0]
      torch32 = _entries(np.zeros_like(np.asarray(leaf64)), torch32_key, path, seed)[1]
      ours_worst[collection] = max(ours_worst.get(collection, 0.0), np.abs(ours32 - exact).max() / scale)
      torch_worst[collection] = max(torch_worst.get(collection, 0.0), np.abs(torch32 - exact).max() / scale)
  print(f"{prefix}: float64 max difference {worst64:.1e}; float32 error vs the exact step (max over "
        "tensors, relative to each tensor's largest entry), ours / PyTorch's: " +
        ", ".join(f"{k} {ours_worst[k]:.1e} / {torch_worst[k]:.1e}" for k in ours_worst))
  # float32 rounding of these gradients reaches ~2e-3 of a tensor's largest entry in
  # PyTorch too (its own worst cases above): the bounds are that level, not a looser one.
  # Ours varies with the CPU's vector width (params at resnet20/0: 1.5e-4 on an AMD EPYC,
  # 2.1e-4 on an Intel Xeon); the float64 comparison above is the proof of equality.
  assert ours_worst["batch_stats"] <= 1e-5
  assert ours_worst["params"] <= 4e-4
  assert ours_worst["momentum"] <= 5e-3
