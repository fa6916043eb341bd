"""Units that start as their shortcut (`identity_init`: SkipInit, ReZero, Fixup) and `norm="none"`.

What is proven: at initialisation every unit of such a network is the identity of its input (its
shortcut where the shape changes), in every unit order and with shortcuts A and B; Fixup follows
the paper's rules (Zhang et al. 2019, §3) and has the parameters of the authors' CIFAR code; the
parts are refused where they cannot work; a network without them builds the same program.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import errors, models

pytestmark = pytest.mark.usefixtures("fast_compile")  # what the networks are, not their speed

SMALL = {"stage_sizes": (1, 2, 1), "stage_widths": (4, 8, 16), "stem_width": 4}
POST_ADDITION_ACT = ("original", "bn_after_add")  # orders whose unit ends in act(shortcut + F)


def _units_in_and_out(model, variables, x, train):
  """Per unit: (its input x, what its shortcut module received, its output), one pass."""
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, models.ResidualUnit):
      seen[module.name] = {**seen.get(module.name, {}), "x": args[0], "out": out}
    elif context.method_name == "__call__" and isinstance(module, models.Shortcut):
      seen[module.parent.name] = {**seen.get(module.parent.name, {}), "shortcut": (args, out)}
    return out

  with nn.intercept_methods(interceptor):
    model.apply(variables, x, train=train, mutable=["batch_stats"])
  return [seen[name] for name in sorted(seen)]


def _assert_units_are_their_shortcuts(model, x, train_modes):
  variables = model.init(jax.random.key(1), x)
  for train in train_modes:
    units = _units_in_and_out(model, variables, x, train)
    assert len(units) == sum(model.stage_sizes)
    for unit in units:
      residual, shortcut_out = unit["shortcut"][0][1], unit["shortcut"][1]
      assert not np.any(np.asarray(residual)), "the branch adds something at initialisation"
      if unit["x"].shape == unit["out"].shape:
        np.testing.assert_array_equal(unit["out"], unit["x"])
      else:  # its shortcut of x (and the ReLU that follows the addition, in those orders)
        want = jax.nn.relu(shortcut_out) if model.unit_order in POST_ADDITION_ACT else shortcut_out
        np.testing.assert_array_equal(unit["out"], want)


@pytest.mark.parametrize("variant", ["skipinit", "rezero", "fixup"])
def test_identity_at_init_units_are_the_identity_of_their_input(variant):
  """Every unit returns its input where its shape stays (a post-addition ReLU sees x ≥ 0, the
  output of a ReLU), else exactly its shortcut of x: the branch adds 0. Every unit order, option
  A and B shortcuts, no normalisation (training and evaluation are then one function)."""
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  for order in models.UNIT_ORDERS:
    for shortcut in ("A", "B"):
      model = models.create("cifar_resnet20", identity_init=variant, norm="none", shortcut=shortcut,
                            unit_order=order, **SMALL)
      _assert_units_are_their_shortcuts(model, x, (True,))


@pytest.mark.parametrize("order", ["original", "full_preact"])
def test_skipinit_with_batchnorm_units_are_the_identity_too(order):
  """With BatchNorm in the branch (not after the addition: order bn_after_add normalises the
  shortcut too), in training (batch statistics) and evaluation."""
  model = models.create("cifar_resnet20", identity_init="skipinit", unit_order=order, **SMALL)
  _assert_units_are_their_shortcuts(model, jax.random.normal(jax.random.key(0), (4, 8, 8, 3)), (False, True))


def test_identity_at_init_networks_start_as_their_stem_through_the_shortcuts():
  """With option A the whole stack of units is the stem's output subsampled and zero-padded."""
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  for name in ("skipinit", "rezero", "fixup"):
    model = models.create("cifar_resnet20", identity_init=name, norm="none", **SMALL)
    variables = model.init(jax.random.key(1), x)
    _, feats = model.apply(variables, x, return_features=True)
    want = models.zero_pad_identity(models.zero_pad_identity(feats["stem"], 8, 2), 16, 2)
    np.testing.assert_array_equal(feats["stage3"], want)


def test_fixup_initialisation_follows_the_papers_rules():
  """Zhang et al. 2019, §3: branch convolutions but the last He-normal (fan-out) × L^(-1/(2m-2)),
  the last and the classifier 0, multipliers 1, biases 0 (the authors' fixup_resnet_cifar.py
  draws std = sqrt(2 / (out · k²)) · L^-0.5 for a basic unit)."""
  model = models.create("cifar_fixup_resnet20", stage_sizes=(4, 4, 4), stage_widths=(16, 32, 64))
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  conv1 = np.concatenate([np.ravel(params[f"stage3_unit{u}"]["conv1"]["kernel"]) for u in (2, 3, 4)])
  want = np.sqrt(2.0 / (64 * 9)) * 12 ** -0.5  # L = 12 branches of m = 2 layers
  assert abs(conv1.std() / want - 1) < 0.01 and abs(conv1.mean()) < 0.01 * want
  for unit in (f"stage{s}_unit{u}" for s in (1, 2, 3) for u in (1, 2, 3, 4)):
    assert not np.any(params[unit]["conv2"]["kernel"])
    assert float(params[unit]["identity_init"]["scale"]) == 1.0
    assert all(float(params[unit][b]["bias"]) == 0.0 for b in ("bias1a", "bias1b", "bias2a"))
    assert float(params[unit]["identity_init"]["bias"]) == 0.0
  assert not np.any(params["head"]["kernel"]) and not np.any(params["head"]["bias"])
  assert float(params["stem_bn"]["bias"]) == 0.0 and float(params["head_bias"]["bias"]) == 0.0
  # A bottleneck branch has m = 3 layers: L^(-1/4).
  assert models.Fixup.branch_kernel_scale(16, 3) == pytest.approx(0.5)


@pytest.mark.parametrize("depth", [20, 110])
def test_fixup_networks_have_the_parameters_of_the_authors_cifar_code(depth):
  """fixup_resnet{depth}: bias-free 3×3 convolutions, a 64→10 linear layer with bias, five scalars
  per unit (bias1a, bias1b, bias2a, scale, bias2b) and two more (bias1 after the stem's
  convolution, bias2 before the classifier)."""
  n = (depth - 2) // 6
  convs = 3 * 16 * 9 + sum(9 * (w_in * w + w * w) + (n - 1) * 2 * 9 * w * w
                           for w_in, w in ((16, 16), (16, 32), (32, 64)))
  want = convs + 64 * 10 + 10 + 5 * 3 * n + 2
  params, _ = models.size(models.create(f"cifar_fixup_resnet{depth}"), (1, 32, 32, 3))
  assert params == want


def test_fixup_unit_computes_the_papers_block():
  """Zhang et al. 2019, Fig. 1 (right): ReLU(s · conv2(ReLU(conv1(x + a) + b) + c) + d + x)."""
  unit = models.BasicBlock(features=4, norm=models.NoNorm, identity_init=models.Fixup,
                           scalar_bias=models.ScalarBias, branch_kernel_scale=1.0)
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
  params = unit.init(jax.random.key(1), x)["params"]
  keys = iter(jax.random.split(jax.random.key(2), 8))
  params = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape), params)
  conv = lambda y, k: jax.lax.conv_general_dilated(y, k, (1, 1), ((1, 1), (1, 1)),
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  b = lambda name: params[name]["bias"]
  hidden = jax.nn.relu(conv(x + b("bias1a"), params["conv1"]["kernel"]) + b("bias1b"))
  branch = conv(hidden + b("bias2a"), params["conv2"]["kernel"])
  want = jax.nn.relu(params["identity_init"]["scale"] * branch + params["identity_init"]["bias"] + x)
  np.testing.assert_allclose(unit.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)


def test_norm_none_has_no_parameters_and_no_statistics():
  variables = models.abstract_variables(models.create("cifar_resnet20", norm="none", **SMALL), (1, 8, 8, 3))
  assert set(variables) == {"params"}
  assert not any("bn" in "/".join(map(str, path)) for path, _ in jax.tree_util.tree_flatten_with_path(variables)[0])


@pytest.mark.parametrize("fields, pattern", [
    ({"identity_init": "fixup"}, r"identity_init='fixup' trains without normalisation .*: use norm='none', "
                                 r"not norm='batch'"),
    ({"identity_init": "fixup", "norm": "group"}, r"use norm='none', not norm='group'"),
    ({"identity_init": "zero"}, r"unknown identity_init 'zero': valid choices are skipinit, rezero, fixup"),
    ({"identity_init": "rezero", "identity_init_options": {"scale": 1.0}},
     r"identity_init_options 'scale' does not apply to identity_init='rezero' \(takes alpha\)"),
    ({"identity_init": "skipinit", "identity_init_options": {"alpha": "0"}},
     r"identity_init option alpha='0' must be a number"),
    ({"identity_init_options": {"alpha": 0.0}}, r"identity_init_options=\{'alpha': 0.0\} need an identity_init"),
    ({"norm": "none", "norm_options": {"momentum": 0.9}},
     r"norm_options 'momentum' does not apply to norm='none' \(takes no options\)"),
])
def test_identity_init_and_norm_none_refuse_what_cannot_work_in_one_line(fields, pattern):
  with pytest.raises(errors.InputError, match=pattern) as info:
    models.create("cifar_resnet20", **fields)
  assert "\n" not in str(info.value)


def test_skipinit_starts_at_its_alpha_and_learns_it():
  """α is a parameter (the gradient reaches it) starting at `identity_init_options.alpha`."""
  model = models.create("cifar_resnet20", identity_init="skipinit", norm="none",
                        identity_init_options={"alpha": 0.25}, **{**SMALL, "stage_sizes": (1, 2, 1)})
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  variables = model.init(jax.random.key(1), x)
  assert float(variables["params"]["stage2_unit2"]["identity_init"]["alpha"]) == 0.25
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)))(variables["params"])
  assert float(jnp.abs(grads["stage2_unit2"]["identity_init"]["alpha"])) > 0


def test_a_network_without_identity_init_builds_the_same_program():
  """Off, the new parts add no operation (the jaxpr of training and evaluation is the same)."""
  x = jnp.zeros((2, 8, 8, 3))
  default = models.create("cifar_resnet20", **SMALL)
  explicit = models.create("cifar_resnet20", identity_init=None, identity_init_options=None, **SMALL)
  variables = models.abstract_variables(default, x.shape)
  for train in (False, True):
    program = lambda m: str(jax.make_jaxpr(lambda v: m.apply(v, x, train=train, mutable=["batch_stats"]))(variables))
    assert program(default) == program(explicit)
