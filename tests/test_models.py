"""Model zoo: exact sizes, costs, equivalences and errors (shapes via jax.eval_shape where values are not needed)."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax as rj
from resnet_jax import models

pytestmark = pytest.mark.usefixtures("fast_compile")  # what the networks are, not their speed

# torchvision's *_Weights.IMAGENET1K_V1 meta "num_params" (1000 classes).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "wide_resnet50_2": 68_883_240,
}
# Exact counts of the papers' CIFAR networks (10 classes), and the size each paper prints.
PAPER_PARAMS = {
    "cifar_resnet20": (269_722, 0.27e6), "cifar_resnet32": (464_154, 0.46e6),
    "cifar_resnet44": (658_586, 0.66e6), "cifar_resnet56": (853_018, 0.85e6),
    "cifar_resnet110": (1_727_962, 1.7e6), "cifar_resnet1202": (19_421_274, 19.4e6),
    "cifar_preact_resnet164": (1_703_258, 1.7e6),
    # The paper prints 10.2M; the authors' resnet-pre-act.lua structure gives 10.33M.
    "cifar_preact_resnet1001": (10_327_706, 10.3e6),
    "resnext29_8x64d": (34_426_698, 34.4e6),
    # The paper prints 68.1M; the exact count rounds to 68.2M.
    "resnext29_16x64d": (68_155_210, 68.1e6),
}
# He et al. 2015, Table 1 (multiply-adds, stride on the first 1×1 as in the paper).
PAPER_MACS = {"resnet18": 1.8e9, "resnet34": 3.6e9, "resnet50": 3.8e9, "resnet101": 7.6e9, "resnet152": 11.3e9}
# torchvision "_ops" (GFLOPS = multiply-adds), stride on the 3×3 (v1.5).
TORCHVISION_MACS = {"resnet50": 4.089e9, "resnext50_32x4d": 4.23e9, "wide_resnet50_2": 11.398e9}


def n_params(name, input_shape=(1, 32, 32, 3), **overrides):
  return models.count_params(models.abstract_variables(models.create(name, **overrides), input_shape))


def tiny(**overrides):
  """A 2-stage CIFAR net small enough to run for real in a test."""
  fields = dict(stage_sizes=(1, 1), stage_widths=(4, 8), stem_width=4)
  fields.update(overrides)
  return models.create("cifar_resnet20", **fields)


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_param_counts_equal_torchvision(name):
  assert n_params(name, stride_on="conv3x3") == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_param_counts_match_papers(name):
  exact, printed = PAPER_PARAMS[name]
  count = models.size(models.create(name), (1, 32, 32, 3))[0]  # equal to the whole trace (tested below)
  assert count == exact
  assert abs(count - printed) <= 0.051e6 * max(1, printed / 1e6 / 10), (count, printed)


@pytest.mark.parametrize("model, shape", [
    (models.create("cifar_resnet56"), (2, 32, 32, 3)),
    (models.create("cifar_preact_resnet164", stage_sizes=(4, 1, 3)), (1, 32, 32, 3)),
    (models.create("cifar_resnet20", stage_sizes=(3, 5, 4), shortcut="gate"), (1, 32, 32, 3)),
    (models.create("resnext50_32x4d", stage_sizes=(3, 2, 1, 4), stage_widths=(8, 16, 32, 64)), (1, 64, 64, 3)),
    (models.create("resnet50", stage_sizes=(3, 4), stage_widths=(8, 16), num_classes=0), (1, 64, 64, 3)),
], ids=["resnet56", "preact_bottleneck", "gates", "resnext", "headless"])
def test_size_from_two_units_per_stage_equals_the_whole_trace(model, shape):
  assert models.size(model, shape) == (models.count_params(models.abstract_variables(model, shape)),
                                       models.flops(model, shape))


def test_size_of_another_module_is_traced_whole():
  class Doubled(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(3)(tiny()(x, train))

  shape = (1, 16, 16, 3)
  assert models.size(Doubled(), shape) == (models.count_params(models.abstract_variables(Doubled(), shape)),
                                           models.flops(Doubled(), shape))


def test_option_a_adds_no_parameters_and_b_adds_the_projections():
  plain, option_a = n_params("cifar_plain56"), n_params("cifar_resnet56")
  assert plain == option_a
  # Two 1×1 projections + BN at the down-sampling units: 16·32 + 2·32 + 32·64 + 2·64.
  assert n_params("cifar_resnet56", shortcut="B") == option_a + 2_752
  assert n_params("cifar_resnet56", shortcut="C") > n_params("cifar_resnet56", shortcut="B")


@pytest.mark.parametrize("name", sorted(PAPER_MACS))
def test_macs_match_paper_table1(name):
  macs = models.flops(models.create(name), (1, 224, 224, 3))
  assert abs(macs / PAPER_MACS[name] - 1) < 0.03, macs


@pytest.mark.parametrize("name", sorted(TORCHVISION_MACS))
def test_macs_match_torchvision_v15(name):
  macs = models.flops(models.create(name, stride_on="conv3x3"), (1, 224, 224, 3))
  assert abs(macs / TORCHVISION_MACS[name] - 1) < 0.003, macs


def test_stride_placement_changes_cost_not_size():
  v1, v15 = models.create("resnet50"), models.create("resnet50", stride_on="conv3x3")
  assert n_params("resnet50") == n_params("resnet50", stride_on="conv3x3")
  assert models.flops(v1, (2, 224, 224, 3)) == pytest.approx(3.858e9, rel=1e-3)
  assert models.flops(v15, (2, 224, 224, 3)) > models.flops(v1, (2, 224, 224, 3))


def test_xla_cost_analysis_is_close_below_the_layer_count():
  model = models.create("cifar_resnet56")
  paper, xla = models.flops(model, (1, 32, 32, 3)), models.xla_flops(model, (1, 32, 32, 3))
  assert 0.85 * paper < xla < paper, (paper, xla)


def test_summary_table_adds_up():
  model = models.create("cifar_resnet110")
  rows = models.stage_costs(model, (1, 32, 32, 3))
  assert [r["stage"] for r in rows] == ["stem", "stage1", "stage2", "stage3", "head"]
  assert sum(r["params"] for r in rows) == 1_727_962
  assert sum(r["macs"] for r in rows) == models.flops(model, (1, 32, 32, 3))
  assert rows[3]["output_shape"] == (1, 8, 8, 64)
  text = models.summary(model, (1, 32, 32, 3))
  assert "1,727,962" in text and "stage3" in text


def _build_and_run(model, shape):
  x = jnp.zeros(shape, jnp.float32)
  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)
  train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": jax.random.key(2)})
  eval_logits, feats = model.apply(variables, x, train=False, return_features=True)
  return variables, train_logits, updates, eval_logits, feats


@pytest.mark.parametrize("name", models.names())
def test_every_named_network_builds_and_runs(name):
  # Two units per stage at most: every kind of unit of the network, traced in a fraction of
  # the time (the later units repeat the second; `models.size` counts them).
  model = models.create(name)
  model = model.clone(stage_sizes=tuple(min(n, 2) for n in model.stage_sizes))
  shape = (2, 32, 32, 3)
  variables, train_logits, updates, eval_logits, feats = jax.eval_shape(
      functools.partial(_build_and_run, model, shape))
  statistics = {"batch_stats"} if model.norm == "batch" else set()  # GroupNorm networks have none
  assert set(variables) == {"params", *statistics}
  assert set(updates) == statistics
  assert train_logits.shape == eval_logits.shape == (2, model.num_classes)
  assert eval_logits.dtype == jnp.float32
  stages = [f"stage{i + 1}" for i in range(len(model.stage_sizes))]
  assert set(feats) == {"stem", *stages, "pre_logits"}
  assert feats["pre_logits"].shape[0] == 2
  assert feats[stages[-1]].shape[-1] == model.unit_features(len(stages) - 1)[0]


def test_tiny_network_runs_for_real_and_updates_bn_statistics():
  model = tiny()
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert np.all(np.isfinite(logits))
  before = variables["batch_stats"]["stem_bn"]["mean"]
  after = updates["batch_stats"]["stem_bn"]["mean"]
  assert not np.allclose(before, after)
  eval_logits = model.apply(variables, x, train=False)
  assert not np.allclose(logits, eval_logits)  # batch vs running statistics


@pytest.mark.parametrize("shortcut", models.SHORTCUTS)
@pytest.mark.parametrize("unit_order", models.UNIT_ORDERS)
def test_every_shortcut_with_every_unit_order(shortcut, unit_order):
  model = tiny(shortcut=shortcut, unit_order=unit_order)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x, train=False)
  logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)})
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))


def test_bottleneck_with_every_shortcut_and_order_builds():
  for shortcut in models.SHORTCUTS:
    for order in models.UNIT_ORDERS:
      model = models.create("cifar_preact_resnet164", stage_sizes=(1, 1), stage_widths=(4, 8), stem_width=4,
                            shortcut=shortcut, unit_order=order)
      jax.eval_shape(functools.partial(_build_and_run, model, (2, 16, 16, 3)))


def test_variant_shortcut_parameters():
  params = lambda **kw: models.count_params(models.abstract_variables(tiny(**kw), (1, 16, 16, 3)))
  base = params(shortcut="A")
  assert params(shortcut="none") == base
  assert params(shortcut="scale") == base and params(shortcut="dropout") == base
  # B: one 1×1 conv 4→8 + BN at the down-sampling unit.
  assert params(shortcut="B") == base + 4 * 8 + 16
  assert params(shortcut="scale", shortcut_options={"downsample": "B"}) == base + 4 * 8 + 16
  # conv1x1 everywhere: 4→4 and 4→8, no BN.
  assert params(shortcut="conv1x1") == base + 16 + 32
  # gates: a 1×1 conv with bias per unit.
  assert params(shortcut="gate") == base + (16 + 4) + (32 + 8)
  gate = tiny(shortcut="gate", shortcut_options={"gate_bias_init": -6.0})
  variables = models.abstract_variables(gate, (1, 16, 16, 3))
  real = gate.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
  assert np.all(real["params"]["stage1_unit1"]["shortcut"]["gate_conv"]["bias"] == -6.0)
  assert "gate_conv" in variables["params"]["stage2_unit1"]["shortcut"]


def test_scale_and_gate_shortcuts_compute_the_papers_formulas():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  f = jax.random.normal(jax.random.key(1), (2, 4, 4, 8))
  scaled = models.ScaledShortcut(features=8, scale=0.5, scale_residual=True)
  out = scaled.apply({}, x, f, train=False)
  np.testing.assert_allclose(out, 0.5 * x + 0.5 * f, rtol=1e-6)
  gate = models.GatedShortcut(features=8, conv=functools.partial(nn.Conv, use_bias=False), exclusive=True,
                              gate_bias_init=-6.0)
  variables = gate.init(jax.random.key(2), x, f, train=False)
  g = jax.nn.sigmoid(jnp.einsum("bhwc,cd->bhwd", x, variables["params"]["gate_conv"]["kernel"][0, 0]) - 6.0)
  np.testing.assert_allclose(gate.apply(variables, x, f, train=False), g * f + (1 - g) * x, rtol=1e-5, atol=1e-6)
  only = models.GatedShortcut(features=8, conv=functools.partial(nn.Conv, use_bias=False), exclusive=False)
  np.testing.assert_allclose(only.apply(variables, x, f, train=False), f + (1 - g) * x, rtol=1e-5, atol=1e-6)


def test_dropout_shortcut_drops_only_in_training():
  x = jnp.ones((4, 4, 4, 8))
  drop = models.DropoutShortcut(features=8, rate=0.5)
  np.testing.assert_array_equal(drop.apply({}, x, jnp.zeros_like(x), train=False), x)
  out = drop.apply({}, x, jnp.zeros_like(x), train=True, rngs={"dropout": jax.random.key(0)})
  assert set(np.unique(np.asarray(out))) == {0.0, 2.0}


def test_option_a_zero_pads_and_subsamples():
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 4))
  out = models.zero_pad_identity(x, 8, 2)
  assert out.shape == (1, 4, 4, 8)
  np.testing.assert_array_equal(out[..., :4], x[:, ::2, ::2, :])
  np.testing.assert_array_equal(out[..., 4:], 0)


def _random_bn_stats(variables, seed):
  """Replaces every BN statistic and affine parameter with random values."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("var",):
      return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
    if name in ("mean", "bias", "scale"):
      return jnp.asarray(rng.normal(size=leaf.shape), leaf.dtype)
    return leaf
  return jax.tree_util.tree_map_with_path(fill, variables)


def test_resnext_grouped_conv_equals_split_transform_merge():
  """Xie et al. 2017, Fig. 3: the grouped block (c) equals C explicit paths (a) summed."""
  cardinality, width, in_features, out_features = 4, 2, 16, 16
  norm = functools.partial(models.BatchNorm)
  conv = functools.partial(nn.Conv, use_bias=False)
  block = models.BottleneckBlock(features=out_features, bottleneck_features=cardinality * width,
                                 cardinality=cardinality, stride_on="conv3x3", conv=conv, norm=norm,
                                 shortcut=models.make_shortcut("B"))
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, in_features))
  variables = _random_bn_stats(block.init(jax.random.key(1), x, train=False), 0)
  expected = block.apply(variables, x, train=False)

  p, s = variables["params"], variables["batch_stats"]

  def bn(y, name, sl=slice(None)):
    return (y - s[name]["mean"][sl]) / jnp.sqrt(s[name]["var"][sl] + 1e-5) * p[name]["scale"][sl] + p[name]["bias"][sl]

  def conv2d(y, kernel):
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(y, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  total = 0.0
  for g in range(cardinality):
    sl = slice(g * width, (g + 1) * width)
    a = jax.nn.relu(bn(conv2d(x, p["conv1"]["kernel"][..., sl]), "bn1", sl))
    b = jax.nn.relu(bn(conv2d(a, p["conv2"]["kernel"][..., sl]), "bn2", sl))
    total = total + conv2d(b, p["conv3"]["kernel"][:, :, sl, :])
  out = bn(total, "bn3")
  np.testing.assert_allclose(expected, jax.nn.relu(out + x), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("unit_order", models.UNIT_ORDERS)
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_zeroed_residual_branch_leaves_the_shortcut(unit_order, block):
  """A unit whose branch is zero: identity for pre-activation, ReLU(identity) for the original."""
  cls = models.BLOCKS[block]
  extra = {"bottleneck_features": 4} if block == "bottleneck" else {}
  unit = cls(features=16, conv=functools.partial(nn.Conv, use_bias=False), norm=models.BatchNorm,
             shortcut=models.make_shortcut("A"), unit_order=unit_order, zero_init_residual=True, **extra)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  variables = unit.init(jax.random.key(1), x, train=False)
  for train in (False, True):
    out = unit.apply(variables, x, train=train, mutable=["batch_stats"])[0]
    if unit_order in ("full_preact", "relu_preact", "relu_before_add"):
      np.testing.assert_allclose(out, x, atol=1e-6)
    elif unit_order == "original":
      np.testing.assert_allclose(out, jax.nn.relu(x), atol=1e-6)
    else:  # bn_after_add normalises the sum
      assert out.min() >= 0


def test_preact_network_ends_with_bn_relu_and_first_unit_reuses_stem_activation():
  params = models.abstract_variables(models.create("cifar_preact_resnet164"), (1, 32, 32, 3))["params"]
  assert "final_bn" in params
  assert "bn1" not in params["stage1_unit1"]          # activated by the stem's BN-ReLU
  assert "bn1" in params["stage1_unit2"] and "bn1" in params["stage2_unit1"]
  # Pre-activated projection: 1×1 conv without BN (resnet-pre-act.lua).
  assert set(params["stage2_unit1"]["shortcut"]) == {"projection_conv"}


def test_ghost_batch_norm_uses_group_statistics():
  x = jax.random.normal(jax.random.key(0), (8, 4, 4, 3)) * jnp.arange(1, 9.0)[:, None, None, None]
  full = models.BatchNorm()
  variables = full.init(jax.random.key(1), x, train=False)
  whole, _ = full.apply(variables, x, train=True, mutable=["batch_stats"])
  same, _ = models.BatchNorm(group_size=8).apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(whole, same, atol=1e-5)
  ghost, _ = models.BatchNorm(group_size=4).apply(variables, x, train=True, mutable=["batch_stats"])
  first_half, _ = full.apply(variables, x[:4], train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(ghost[:4], first_half, atol=1e-5)
  assert not np.allclose(ghost, whole, atol=1e-3)
  with pytest.raises(ValueError, match="group_size=3"):
    models.BatchNorm(group_size=3).apply(variables, x, train=True, mutable=["batch_stats"])


def test_bn_axis_name_synchronises_statistics_under_shard_map():
  mesh = jax.make_mesh((1,), ("data",))
  x = jax.random.normal(jax.random.key(0), (4, 4, 4, 3))
  bn = models.BatchNorm(axis_name="data")
  variables = bn.init(jax.random.key(1), x, train=False)
  fn = jax.jit(jax.shard_map(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"])[0], mesh=mesh,
                     in_specs=(jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec("data")),
                     out_specs=jax.sharding.PartitionSpec("data")))
  synced = fn(variables, jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))))
  local, _ = models.BatchNorm().apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(synced, local, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = tiny(dtype=jnp.bfloat16)
  x = jnp.ones((2, 16, 16, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
  logits, feats = model.apply(variables, x, train=False, return_features=True)
  assert logits.dtype == jnp.float32
  assert feats["stage1"].dtype == jnp.bfloat16


def test_plain_net_class_is_resnet_without_shortcuts():
  plain = rj.PlainNet(stage_sizes=(3, 3, 3), block="basic", stem="cifar", stem_width=16,
                      stage_widths=(16, 32, 64), num_classes=10)
  assert plain.shortcut == "none"
  assert models.count_params(models.abstract_variables(plain, (1, 32, 32, 3))) == 269_722


def test_names_are_sorted_and_cover_the_papers():
  names = models.names()
  assert names == sorted(names)
  for required in ["cifar_resnet20", "cifar_resnet1202", "cifar_plain56", "cifar_preact_resnet1001",
                   "resnext29_16x64d", "resnet200", "plain34", "preact_resnet200", "resnext101_64x4d",
                   "resnext101_32x8d", "wide_resnet50_2"]:
    assert required in names


def test_unknown_model_name_lists_valid_choices():
  with pytest.raises(ValueError, match=r"unknown model 'resnet51'.*did you mean.*resnet50.*valid names"):
    models.create("resnet51")


def test_unknown_field_and_bad_values_raise_clear_errors():
  with pytest.raises(ValueError, match=r"unknown model field 'shortcuts'.*did you mean shortcut"):
    models.create("cifar_resnet20", shortcuts="B")
  with pytest.raises(ValueError, match=r"unknown shortcut 'D'.*valid choices are A, B, C"):
    models.create("cifar_resnet20", shortcut="D")
  with pytest.raises(ValueError, match=r"unknown unit_order 'preact'.*full_preact"):
    models.create("cifar_resnet20", unit_order="preact")
  with pytest.raises(ValueError, match=r"unknown stride_on"):
    models.create("resnet50", stride_on="conv7x7")
  with pytest.raises(ValueError, match=r"shortcut option downsample='Z' must be 'A'"):
    models.create("resnet50", shortcut="gate", shortcut_options={"downsample": "Z"})


@pytest.mark.parametrize("shape", [(32, 32, 3), (2, 32, 32, 1), (2, 3, 32, 32)])
def test_wrong_input_shape_is_a_clear_error(shape):
  model = tiny()
  with pytest.raises(ValueError, match=r"expected images of shape \(batch, height, width, 3\).*got shape"):
    model.init(jax.random.key(0), jnp.zeros(shape), train=False)
