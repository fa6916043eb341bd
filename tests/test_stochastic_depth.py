"""Stochastic depth (Huang et al. 2016) as `drop_path_rate`: what each unit drops, how kept
branches are scaled, that evaluation is the network without it, and that packed runs each
draw their own keys from their own state (one packed step equals the runs' own steps).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import errors, models
from resnet_jax.configs import base
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.train import state as state_lib
from resnet_jax.train import step as step_lib

pytestmark = pytest.mark.usefixtures("fast_compile")  # what the networks are, not their speed

TINY = {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 8), "stem_width": 4}


def tiny(**overrides):
  return models.create("cifar_resnet20", **{**TINY, **overrides})


def _branches(model, variables, x, rng):
  """Per unit, in order: (the branch's last norm output F(x), what the shortcut adds: F after
  stochastic depth), from one train-mode pass (Flax method interception)."""
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and len(module.path) == 2 and module.path[0].startswith("stage"):
      unit = module.path[0]
      if module.name == "bn2":
        seen.setdefault(unit, {})["branch"] = out
      elif module.name == "shortcut":
        seen.setdefault(unit, {})["added"] = args[1]
    return out

  def run(variables, x, rng):
    with nn.intercept_methods(interceptor):
      model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
    return [(seen[u]["branch"], seen[u]["added"]) for u in sorted(seen)]
  return jax.jit(run)(variables, x, rng)


def test_drop_rates_follow_the_papers_linear_rule_and_timms():
  """Huang et al. 2016, Eq. 4: p_l = 1 − l/L·(1 − p_L); timm: linspace(0, rate, L)."""
  np.testing.assert_allclose(models.drop_rates(0.5, 4, "linear"), [0.125, 0.25, 0.375, 0.5])
  np.testing.assert_allclose(models.drop_rates(0.5, 5, "timm"), [0.0, 0.125, 0.25, 0.375, 0.5])
  np.testing.assert_allclose(tiny(drop_path_rate=0.6, stage_sizes=(2, 2, 2)).drop_path_rates(),
                             [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])


def test_drop_path_survival_rate_follows_the_linear_rule():
  """Over 2048 examples each of 6 units keeps its branch as often as its rule says (4 binomial σ),
  and a kept branch is divided by its survival probability: the expectation is the network's."""
  model = tiny(drop_path_rate=0.6, stage_sizes=(2, 2, 2))
  x = jax.random.normal(jax.random.key(0), (2048, 4, 4, 3))
  variables = model.init(jax.random.key(1), x[:2], train=False)
  units = _branches(model, variables, x, jax.random.key(2))
  for (branch, added), rate in zip(units, model.drop_path_rates(), strict=True):
    branch, added = np.asarray(branch), np.asarray(added)
    kept = np.abs(added).reshape(len(x), -1).max(axis=1) > 0
    survival = 1.0 - rate
    assert abs(kept.mean() - survival) < 4 * np.sqrt(survival * rate / len(x)), (rate, kept.mean())
    np.testing.assert_allclose(added[kept], branch[kept] / survival, rtol=1e-6, atol=1e-6)
    assert not np.any(added[~kept])


def test_drop_path_keeps_the_expectation_of_a_branch():
  x = jnp.arange(1.0, 9.0).reshape(8, 1, 1, 1) * jnp.ones((8, 2, 2, 3))
  draws = jax.vmap(lambda k: models.drop_path(x, 0.25, k))(jax.random.split(jax.random.key(0), 20000))
  np.testing.assert_allclose(draws.mean(axis=0), x, rtol=0.02)
  assert set(np.unique(np.asarray(draws[:, 3]))) == {0.0, np.float32(4.0 / 0.75)}


@pytest.mark.parametrize("unit_order, shortcut", [(order, "B") for order in models.UNIT_ORDERS]
                         + [("original", "A"), ("full_preact", "gate"), ("original", "dropout")])
def test_eval_is_the_network_without_drop_path_in_every_order_and_shortcut(unit_order, shortcut):
  dropped = tiny(drop_path_rate=0.5, unit_order=unit_order, shortcut=shortcut)
  plain = tiny(unit_order=unit_order, shortcut=shortcut)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  variables = plain.init(jax.random.key(1), x, train=False)
  np.testing.assert_array_equal(dropped.apply(variables, x), plain.apply(variables, x))
  # In training it drops: another function of the same variables (a rate this high drops some).
  train = lambda m: m.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)})[0]
  assert not np.allclose(train(dropped), train(plain))


def test_a_network_without_the_new_parts_compiles_to_the_same_program():
  """Off, the new parts add no operation: the same jaxpr, in training and evaluation."""
  x = jnp.zeros((2, 32, 32, 3))
  off = dict(drop_path_rate=0.0, drop_path_rule="timm", attention=None, attention_options=None, anti_alias=None,
             output_stride=None, norm_options={})
  small = {"stage_sizes": (1, 2, 1, 1), "stage_widths": (4, 8, 8, 8), "stem_width": 4}
  for name, extra in (("cifar_resnet20", {}), ("resnet18", {**small, "shortcut_options": {"avg_down": False}})):
    default, explicit = models.create(name, **small if name == "resnet18" else {}), models.create(name, **off, **extra)
    variables = models.abstract_variables(default, x.shape)
    for train in (False, True):
      program = lambda m: str(jax.make_jaxpr(lambda v: m.apply(v, x, train=train, mutable=["batch_stats"],
                                                                rngs={"dropout": jax.random.key(1)}))(variables))
      assert program(default) == program(explicit), (name, train)
  # Evaluation with stochastic depth on is the same program too (nothing is drawn).
  eval_program = lambda m: str(jax.make_jaxpr(lambda v: m.apply(v, x))(variables))
  assert eval_program(models.create("resnet18", drop_path_rate=0.2, **small)) == eval_program(default)


def test_a_plain_net_refuses_stochastic_depth_in_one_line():
  with pytest.raises(errors.InputError, match=r"drop_path_rate=0.1 drops residual branches, and a plain net "
                     r"\(shortcut='none'\) has none") as info:
    models.create("cifar_plain20", drop_path_rate=0.1)
  assert "\n" not in str(info.value)
  for bad in (1.0, -0.1, "0.1", True):
    with pytest.raises(errors.InputError, match=r"drop_path_rate=.* must be a number in \[0.0, 1.0\)"):
      tiny(drop_path_rate=bad)
  with pytest.raises(errors.InputError, match=r"unknown drop_path_rule 'cosine': valid choices are linear, timm"):
    tiny(drop_path_rule="cosine")


def _step_setup(seed, config):
  model = tiny(num_classes=10, drop_path_rate=0.5, norm_options={"group_size": 8})
  tx = optax.sgd(0.1, momentum=0.9)
  return model, tx, state_lib.create_train_state(model, tx, mesh_lib.create_mesh(), (32, 32, 3), seed)


def test_one_packed_step_equals_the_unpacked_one():
  """Each packed run draws its drop masks from its own state's rng, as it does alone."""
  config = base.base_config()
  config.global_batch_size = 16
  mesh = mesh_lib.create_mesh()
  preprocess = lambda images, rng, train: images.astype(jnp.float32) / 255.0 - 0.5
  rng = np.random.RandomState(0)
  batches = [{"image": jnp.asarray(rng.randint(0, 256, (16, 32, 32, 3)), jnp.uint8),
              "label": jnp.asarray(rng.randint(0, 10, (16,)), jnp.int32)} for _ in range(2)]
  zeros = lambda: step_lib.new_metrics(step_lib.zero_train_metrics, mesh)
  setups = [_step_setup(seed, config) for seed in (0, 1)]
  model, tx = setups[0][:2]
  alone_step = step_lib.make_train_step(model, tx, config, mesh, preprocess, 10)
  alone = [alone_step(jax.tree.map(jnp.copy, s), zeros(), b)[0] for (_, _, s), b in zip(setups, batches)]
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
  train_model = step_lib.model_for_platform(model, mesh.devices.flat[0].platform, 1)
  packed_step = step_lib.build_packed_train_step(train_model, [tx, tx], config, mesh, preprocess, 10)
  packed, _ = packed_step(stack([s for _, _, s in setups]), stack([zeros(), zeros()]), stack(batches))
  for r in range(2):
    for got, want in zip(jax.tree.leaves(jax.tree.map(lambda t: t[r], packed.params)),
                         jax.tree.leaves(alone[r].params), strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
