"""Models as a library: swapping norm, conv, activation, stem and block; remat; headless networks."""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models

X = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
LABELS = jnp.array([0, 1, 2, 3])


def tiny(**overrides):
  """A 2-stage CIFAR net (widths 4, 8), small enough to run for real."""
  fields = dict(stage_sizes=(1, 1), stage_widths=(4, 8), stem_width=4)
  fields.update(overrides)
  return models.create("cifar_resnet20", **fields)


def shapes(tree):
  return jax.tree.map(jnp.shape, tree)


def loss_and_grads(model, variables, x=X, labels=LABELS):
  """Cross-entropy of a training-mode forward pass; gradients w.r.t. params; new batch_stats."""
  rest = {k: v for k, v in variables.items() if k != "params"}

  def loss_fn(params):
    logits, updates = model.apply({"params": params, **rest}, x, train=True, mutable=list(rest))
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1)), updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
  return loss, grads, updates


# -- norm ------------------------------------------------------------------------


def test_group_norm_network_trains_one_step():
  model = tiny(norm=models.flax_norm(nn.GroupNorm, num_groups=2), zero_init_residual=True)
  variables = model.init(jax.random.key(1), X, train=False)
  assert set(variables) == {"params"}  # no running statistics
  params = variables["params"]
  assert set(params["stem_bn"]) == {"scale", "bias"}
  # Zero-init residual reaches the Flax norm through scale_init.
  assert np.all(params["stage1_unit1"]["bn2"]["scale"] == 0)
  assert np.all(params["stage1_unit1"]["bn1"]["scale"] == 1)

  loss, grads, _ = loss_and_grads(model, variables)
  assert np.isfinite(loss)
  assert shapes(grads) == shapes(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["stem_conv"]["kernel"]).sum()) > 0
  assert float(jnp.abs(grads["head"]["kernel"]).sum()) > 0
  new_params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
  new_loss, _, _ = loss_and_grads(model, {"params": new_params})
  assert new_loss < loss


def test_group_norm_matches_flax_and_follows_the_network_dtype():
  norm = models.flax_norm(nn.GroupNorm, num_groups=2)
  model = tiny(norm=norm, dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(1), X, train=False)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  _, feats = model.apply(variables, X, return_features=True)
  assert feats["stem"].dtype == jnp.bfloat16

  module = norm(name="n")
  y = jax.random.normal(jax.random.key(2), (2, 4, 4, 8))
  v = module.init(jax.random.key(3), y, train=True)
  expected = nn.GroupNorm(num_groups=2).apply(v, y)
  for train in (False, True):
    np.testing.assert_array_equal(module.apply(v, y, train=train), expected)


def test_flax_batch_norm_adapter_maps_train_to_batch_statistics():
  ours = tiny()
  stock = tiny(norm=models.flax_norm(nn.BatchNorm, momentum=0.9, epsilon=1e-5))
  variables = ours.init(jax.random.key(1), X, train=False)
  assert shapes(stock.init(jax.random.key(1), X, train=False)) == shapes(variables)
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # running stats differ from batch stats
  for train in (True, False):
    a, stats_a = ours.apply(variables, X, train=train, mutable=["batch_stats"])
    b, stats_b = stock.apply(variables, X, train=train, mutable=["batch_stats"])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    for sa, sb in zip(jax.tree.leaves(stats_a), jax.tree.leaves(stats_b)):
      np.testing.assert_allclose(sa, sb, rtol=1e-4, atol=1e-5)
  train_logits = stock.apply(variables, X, train=True, mutable=["batch_stats"])[0]
  assert not np.allclose(train_logits, stock.apply(variables, X, train=False), atol=1e-3)


def test_named_norms_build_without_batch_statistics():
  layer = models.abstract_variables(tiny(norm="layer"), (2, 32, 32, 3))
  assert set(layer) == {"params"} and set(layer["params"]["stem_bn"]) == {"scale", "bias"}
  group = models.abstract_variables(tiny(norm="group", stem_width=32, stage_widths=(32, 64)), (2, 32, 32, 3))
  assert set(group) == {"params"}


def test_flax_norm_rejects_non_modules():
  with pytest.raises(TypeError, match="flax.linen norm class"):
    models.flax_norm(jnp.mean)


# -- activation and conv ------------------------------------------------------------


def test_callable_activation_is_used_everywhere():
  base = tiny()
  variables = base.init(jax.random.key(1), X, train=False)
  relu_out = base.apply(variables, X)
  np.testing.assert_array_equal(tiny(act=nn.relu).apply(variables, X), relu_out)
  out, feats = tiny(act=jnp.tanh).apply(variables, X, return_features=True)
  assert not np.allclose(out, relu_out)
  assert feats["stem"].min() < 0 and np.abs(feats["stem"]).max() <= 1  # tanh after the stem's norm
  np.testing.assert_array_equal(tiny(act="gelu").apply(variables, X), tiny(act=nn.gelu).apply(variables, X))


def test_custom_conv_is_used_with_the_network_dtype():
  seen = []

  def conv(*args, **kwargs):
    seen.append((kwargs["name"], kwargs["dtype"], kwargs.get("use_bias", True)))
    return nn.Conv(*args, **kwargs)

  variables = tiny(conv=conv, dtype=jnp.bfloat16).init(jax.random.key(1), X, train=False)
  assert ("stem_conv", jnp.bfloat16, True) in seen
  assert {name for name, _, _ in seen} >= {"stem_conv", "conv1", "conv2"}
  assert "bias" in variables["params"]["stage1_unit1"]["conv1"]  # nn.Conv's own default


# -- stem -------------------------------------------------------------------------


class PatchStem(nn.Module):
  """A 4×4/4 patchify stem, built with the network's conv and norm."""
  width: int
  conv: object
  norm: object
  act: object

  @nn.compact
  def __call__(self, x, train):
    x = self.conv(self.width, (4, 4), (4, 4), padding="VALID", name="patch_conv")(x)
    return self.norm(name="norm")(x, train=train)


def test_custom_stem_class():
  model = tiny(stem=PatchStem, stem_width=6, shortcut="B")
  variables = model.init(jax.random.key(1), X, train=False)
  params = variables["params"]
  assert "stem_conv" not in params and "stem_bn" not in params
  assert shapes(params["stem"]) == {"patch_conv": {"kernel": (4, 4, 3, 6)}, "norm": {"scale": (6,), "bias": (6,)}}
  assert "norm" in variables["batch_stats"]["stem"]
  _, feats = model.apply(variables, X, return_features=True)
  assert feats["stem"].shape == (4, 8, 8, 6)
  assert feats["stage2"].shape == (4, 4, 4, 8)
  rows = models.stage_costs(model, (1, 32, 32, 3))
  assert rows[0]["stage"] == "stem" and rows[0]["params"] == 4 * 4 * 3 * 6 + 12


def test_builtin_stem_classes_keep_the_papers_parameter_names():
  by_name = models.abstract_variables(tiny(), (1, 32, 32, 3))
  by_class = models.abstract_variables(tiny(stem=models.CifarStem), (1, 32, 32, 3))
  assert shapes(by_class) == shapes(by_name)
  assert {"stem_conv", "stem_bn"} <= set(by_name["params"])
  imagenet = models.abstract_variables(models.create("resnet18", stem=models.ImageNetStem), (1, 64, 64, 3))
  assert shapes(imagenet) == shapes(models.abstract_variables(models.create("resnet18"), (1, 64, 64, 3)))


# -- block ------------------------------------------------------------------------


class ThreeConvBlock(models.ResidualUnit):
  """3×3 (half width), 3×3 (half width), 1×1: a block with its own expansion."""
  expansion: ClassVar[int] = 2

  def branch(self, in_features):
    half = self.features // 2
    return (models.ConvSpec(half, 3, self.strides), models.ConvSpec(half, 3), models.ConvSpec(self.features, 1))


class NarrowBottleneck(models.BottleneckBlock):
  expansion: ClassVar[int] = 2


def test_custom_block_class_sets_its_own_widths():
  blocks_before = dict(models.BLOCKS)
  model = tiny(block=ThreeConvBlock, shortcut="B")
  assert model.unit_features(0) == (8, None) and model.unit_features(1) == (16, None)
  params = models.abstract_variables(model, (1, 32, 32, 3))["params"]
  assert params["stage1_unit1"]["conv1"]["kernel"].shape == (3, 3, 4, 4)
  assert params["stage2_unit1"]["conv3"]["kernel"].shape == (1, 1, 8, 16)
  assert params["head"]["kernel"].shape == (16, 10)
  assert models.BLOCKS == blocks_before

  bottleneck = tiny(block=NarrowBottleneck, shortcut="B", cardinality=2)
  assert bottleneck.unit_features(1) == (16, 8)
  params = models.abstract_variables(bottleneck, (1, 32, 32, 3))["params"]
  assert params["stage2_unit1"]["conv2"]["kernel"].shape == (3, 3, 4, 8)  # grouped: 8 / 2 inputs
  assert params["stage2_unit1"]["conv3"]["kernel"].shape == (1, 1, 8, 16)


def test_expansion_field_overrides_the_block():
  assert tiny(block="bottleneck").unit_features(1) == (32, 8)
  assert tiny(block="bottleneck", expansion=2).unit_features(1) == (16, 8)
  assert tiny(block="basic").unit_features(1) == (8, None)
  assert tiny(block=ThreeConvBlock, expansion=3).unit_features(1) == (24, None)


def test_blocks_stand_alone_with_their_defaults():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  basic = models.BasicBlock(features=16)
  variables = basic.init(jax.random.key(1), x)
  params = variables["params"]
  # Option B: a 1×1 projection + BN where the shape changes; bias-free He-initialised convs.
  assert shapes(params["shortcut"]) == {"projection_conv": {"kernel": (1, 1, 8, 16)},
                                        "projection_bn": {"scale": (16,), "bias": (16,)}}
  assert set(params["conv1"]) == {"kernel"} and "bn1" in variables["batch_stats"]
  out, _ = basic.apply(variables, x, train=True, mutable=["batch_stats"])
  assert out.shape == (2, 8, 8, 16) and out.min() >= 0

  y = jax.random.normal(jax.random.key(0), (2, 8, 8, 64))
  bottleneck = models.BottleneckBlock(features=64, strides=1)
  params = bottleneck.init(jax.random.key(1), y)["params"]
  assert "shortcut" not in params  # identity where shapes match
  kernel = np.asarray(params["conv3"]["kernel"])  # 1×1, 16 → 64: fan-out 64
  assert kernel.shape == (1, 1, 16, 64)
  assert abs(kernel.std() / np.sqrt(2 / 64) - 1) < 0.1
  assert bottleneck.apply(bottleneck.init(jax.random.key(1), y), y).shape == (2, 8, 8, 64)
  strided = models.BottleneckBlock(features=64, strides=2)
  assert strided.apply(strided.init(jax.random.key(1), y), y).shape == (2, 4, 4, 64)


# -- remat ------------------------------------------------------------------------


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("remat", [True, "dots_saveable", jax.checkpoint_policies.nothing_saveable])
def test_remat_changes_neither_parameters_nor_gradients(block, remat):
  plain, rematted = tiny(block=block), tiny(block=block, remat=remat)
  variables = plain.init(jax.random.key(1), X, train=False)
  rematted_variables = rematted.init(jax.random.key(1), X, train=False)
  assert shapes(rematted_variables) == shapes(variables)
  jax.tree.map(np.testing.assert_array_equal, rematted_variables, variables)

  loss, grads, updates = loss_and_grads(plain, variables)
  r_loss, r_grads, r_updates = loss_and_grads(rematted, variables)
  np.testing.assert_allclose(r_loss, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), r_grads, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), r_updates, updates)

  # The units really are rematerialised: the gradient computation holds checkpoint regions.
  def jaxpr(model):
    return str(jax.make_jaxpr(lambda v: loss_and_grads(model, v)[1])(variables))
  assert "checkpoint" in jaxpr(rematted) or "remat" in jaxpr(rematted)
  assert "checkpoint" not in jaxpr(plain) and "remat" not in jaxpr(plain)


# -- headless ---------------------------------------------------------------------


def test_headless_network_returns_pooled_features():
  headed, headless = tiny(), tiny(num_classes=0)
  variables = headed.init(jax.random.key(1), X, train=False)
  headless_variables = headless.init(jax.random.key(1), X, train=False)
  assert "head" not in headless_variables["params"]
  body = {**variables, "params": {k: v for k, v in variables["params"].items() if k != "head"}}
  assert shapes(headless_variables) == shapes(body)

  out = headless.apply(body, X)
  assert out.shape == (4, 8) and out.dtype == jnp.float32
  _, feats = headed.apply(variables, X, return_features=True)
  np.testing.assert_array_equal(out, feats["pre_logits"])
  out2, feats2 = headless.apply(body, X, return_features=True)
  np.testing.assert_array_equal(out2, feats2["pre_logits"])

  half = tiny(num_classes=0, dtype=jnp.bfloat16)
  assert half.apply(half.init(jax.random.key(1), X, train=False), X).dtype == jnp.float32
  assert models.stage_costs(headless, (1, 32, 32, 3))[-1]["output_shape"] == (1, 8)


# -- configs as plain data, and errors ------------------------------------------------


def test_new_fields_accept_plain_strings():
  assert {"norm", "conv", "act", "stem", "block", "shortcut", "remat"} <= set(models.field_names())
  model = tiny(norm="layer", conv="conv", act="silu", remat="nothing_saveable", num_classes=0)
  assert models.abstract_variables(model, (2, 32, 32, 3))["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 4)


@pytest.mark.parametrize("field, value, pattern", [
    ("norm", "batchnorm", r"unknown norm 'batchnorm': valid choices are batch, group, layer"),
    ("act", "relu2", r"unknown act 'relu2': valid choices are relu, gelu, silu"),
    ("stem", "patch", r"unknown stem 'patch': valid choices are imagenet, cifar"),
    ("block", "resnext", r"unknown block 'resnext': valid choices are basic, bottleneck"),
    ("block", nn.Dense, r"unknown block .*Dense.*ResidualUnit subclass"),
    ("conv", "std", r"unknown conv 'std': valid choices are conv"),
    ("remat", "dots", r"unknown remat 'dots': valid choices are .*dots_saveable"),
    ("num_classes", -1, r"num_classes=-1 must be an integer >= 0"),
])
def test_bad_values_are_one_line_errors(field, value, pattern):
  with pytest.raises(ValueError, match=pattern) as info:
    tiny(**{field: value})
  assert "\n" not in str(info.value)
