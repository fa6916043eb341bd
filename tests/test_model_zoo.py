"""The parts of the 2018–2021 ResNets, each on its own: ResNet-C/D, SE/ECA attention, anti-aliased
downsampling, weight standardisation, BiT's stem, dilated backbones, and the option mappings
(`norm_options`, `attention_options`, `shortcut_options`) with their one-line refusals.
Their agreement with timm is `test_timm_equivalence.py`'s."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import cli, errors, models, paper
from resnet_jax.models import attention as attention_lib

pytestmark = pytest.mark.usefixtures("fast_compile")  # what the networks are, not their speed

NARROW = {"stage_sizes": (1, 1, 1, 1), "stage_widths": (8, 16, 32, 64), "stem_width": 16, "num_classes": 7}


def _params(model, shape=(1, 64, 64, 3)):
  return models.abstract_variables(model, shape)["params"]


def test_se_hidden_width_rounds_as_timm_and_eca_kernel_follows_wang_et_al():
  assert [attention_lib.round_channels(c / 16, 8) for c in (64, 256, 512, 2048)] == [8, 16, 32, 128]
  assert attention_lib.round_channels(256 * 0.25, 8) == 64                   # ResNet-RS: ratio 0.25
  assert [attention_lib.eca_kernel_size(c) for c in (16, 64, 256, 1024, 2048)] == [3, 3, 5, 5, 7]
  unit = _params(models.create("seresnet50"), (1, 32, 32, 3))["stage1_unit1"]["attention"]
  assert unit["reduce"]["kernel"].shape == (256, 16) and unit["expand"]["kernel"].shape == (16, 256)
  eca = _params(models.create("ecaresnet50d"), (1, 32, 32, 3))["stage4_unit3"]["attention"]
  assert eca["conv"]["kernel"].shape == (7, 1, 1) and "bias" not in eca["conv"]


def test_squeeze_excitation_computes_the_papers_formula():
  """Hu et al. 2018, Eq. 2-4: x · σ(W2 δ(W1 mean(x) + b1) + b2)."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 32))
  se = models.SqueezeExcitation(ratio=0.25, divisor=1)
  variables = se.init(jax.random.key(1), x)
  p = variables["params"]
  z = x.mean(axis=(1, 2))
  s = jax.nn.sigmoid(jax.nn.relu(z @ p["reduce"]["kernel"] + p["reduce"]["bias"]) @ p["expand"]["kernel"]
                     + p["expand"]["bias"])
  np.testing.assert_allclose(se.apply(variables, x), x * s[:, None, None, :], rtol=1e-5, atol=1e-6)
  assert p["reduce"]["kernel"].shape == (32, 8)  # divisor 1: the paper's C/r itself


def test_attention_is_a_part_kind_with_options_in_one_mapping():
  net = models.create("cifar_resnet20", attention="se", attention_options={"ratio": 0.5, "divisor": 4})
  assert _params(net, (1, 32, 32, 3))["stage1_unit1"]["attention"]["reduce"]["kernel"].shape == (16, 8)
  custom = models.create("cifar_resnet20", attention=attention_lib.EfficientChannelAttention,
                         attention_options={"kernel_size": 5})
  assert _params(custom, (1, 32, 32, 3))["stage3_unit1"]["attention"]["conv"]["kernel"].shape == (5, 1, 1)
  for fields, pattern in [
      ({"attention": "cbam"}, r"unknown attention 'cbam': valid choices are se, eca"),
      ({"attention": "se", "attention_options": {"gamma": 2}}, r"attention_options 'gamma' does not apply to "
                                                                 r"attention='se' \(takes ratio, divisor\)"),
      ({"attention": "se", "attention_options": {"ratio": 0}}, r"attention option ratio=0 must be a number in \(0, 1\]"),
      ({"attention": "eca", "attention_options": {"kernel_size": 4}}, r"kernel_size=4 must be an odd positive"),
      ({"attention_options": {"ratio": 0.25}}, r"attention_options=\{'ratio': 0.25\} need an attention"),
  ]:
    with pytest.raises(errors.InputError, match=pattern) as info:
      models.create("cifar_resnet20", **fields)
    assert "\n" not in str(info.value)


def test_resnet_d_shortcut_average_pools_before_a_stride_1_projection_on_any_network():
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))  # odd: the last window covers one row
  pooled = models.shortcuts.avg_down_pool(x, 2)
  assert pooled.shape == (2, 4, 4, 4)
  np.testing.assert_allclose(pooled[:, 3, 3], x[:, 6, 6], rtol=1e-6)
  np.testing.assert_allclose(pooled[:, 0, 0], x[:, :2, :2].mean(axis=(1, 2)), rtol=1e-6)
  cifar_d = models.create("cifar_resnet20", shortcut="B", shortcut_options={"avg_down": True})
  cifar_b = models.create("cifar_resnet20", shortcut="B")
  assert models.count_params(_params(cifar_d, (1, 32, 32, 3))) == models.count_params(_params(cifar_b, (1, 32, 32, 3)))
  projection = models.ProjectionShortcut(features=8, strides=2, avg_down=True, conv=models.he_conv)
  variables = projection.init(jax.random.key(1), x[:, :6, :6], jnp.zeros((2, 3, 3, 8)), train=False)
  kernel = variables["params"]["projection_conv"]["kernel"]
  want = jnp.einsum("bhwc,co->bhwo", nn.avg_pool(x[:, :6, :6], (2, 2), (2, 2)), kernel[0, 0])
  got = projection.apply(variables, x[:, :6, :6], jnp.zeros((2, 3, 3, 8)), train=False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(errors.InputError, match=r"shortcut_options 'avg_down' does not apply to shortcut='A'"):
    models.create("cifar_resnet20", shortcut_options={"avg_down": True})


def test_deep_stem_has_three_3x3_convolutions_and_resnet_rs_a_fourth_for_the_pool():
  deep = _params(models.create("resnet50d"))
  assert [deep[f"stem_conv{i}"]["kernel"].shape for i in (1, 2, 3)] == [(3, 3, 3, 32), (3, 3, 32, 32),
                                                                        (3, 3, 32, 64)]
  rs = _params(models.create("resnetrs50"))
  assert rs["stem_conv4"]["kernel"].shape == (3, 3, 64, 64) and "stem_bn4" in rs
  _, feats = jax.eval_shape(lambda: models.create("resnetrs50", **NARROW).init_with_output(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), return_features=True)[0])
  assert feats["stem"].shape == (1, 16, 16, 16)


@pytest.mark.parametrize("output_stride, strides", [(8, (4, 8, 8, 8)), (16, (4, 8, 16, 16)), (None, (4, 8, 16, 32))])
def test_output_stride_keeps_later_stages_at_their_resolution_and_dilates(output_stride, strides):
  model = models.create("resnet50d", **NARROW, output_stride=output_stride)
  x = jnp.zeros((1, 64, 64, 3))
  _, feats = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, return_features=True)[0])
  assert [64 // feats[f"stage{i}"].shape[1] for i in (1, 2, 3, 4)] == list(strides)
  assert models.count_params(_params(model)) == models.count_params(_params(models.create("resnet50d", **NARROW)))
  if output_stride == 8:
    assert [(p.strides, p.dilation, p.first_dilation) for p in model.stage_plan()][2:] == [(1, 2, 1), (1, 4, 2)]


@pytest.mark.parametrize("fields, pattern", [
    ({"output_stride": 32}, r"output_stride=32 must be None or one of 4, 8, 16 \(this network's stride is 32\)"),
    ({"output_stride": 12}, r"output_stride=12 must be None or one of 4, 8, 16"),
    ({"output_stride": 8, "anti_alias": "blur"}, r"anti_alias='blur' with output_stride=8 is not supported"),
])
def test_bad_output_strides_are_one_line_errors(fields, pattern):
  with pytest.raises(errors.InputError, match=pattern) as info:
    models.create("resnet50d", **fields)
  assert "\n" not in str(info.value)
  with pytest.raises(errors.InputError, match=r"output_stride=8 must be None or one of 1, 2 \(this network's "
                     r"stride is 4\)"):
    models.create("cifar_resnet20", output_stride=8)


def test_blur_pool_low_pass_filters_then_subsamples():
  """Zhang 2019: a constant stays constant (the filter sums to 1, reflection padding), a
  one-pixel checkerboard (the highest frequency) is removed."""
  const = jnp.full((1, 8, 8, 2), 3.0)
  np.testing.assert_allclose(models.blur_pool(const, 2), jnp.full((1, 4, 4, 2), 3.0), rtol=1e-6)
  board = (jnp.indices((8, 8)).sum(0) % 2).astype(jnp.float32)[None, :, :, None]
  np.testing.assert_allclose(models.blur_pool(board, 1)[:, 1:-1, 1:-1], 0.5, rtol=1e-6)
  np.testing.assert_allclose(models.avg_pool(board, 2), 0.5, rtol=1e-6)
  assert models.size(models.create("resnetblur50"), (1, 64, 64, 3)) [0] == 25_557_032  # resnet50's weights
  with pytest.raises(errors.InputError, match=r"anti_alias='blur': stem 'bit' has no strided pooling"):
    models.create("resnetv2_50x1_bit", anti_alias="blur")


def test_weight_standardized_convolution_convolves_with_the_standardised_kernel():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  conv = models.WeightStandardizedConv(4, (3, 3), use_bias=False, epsilon=1e-8)
  variables = conv.init(jax.random.key(1), x)
  kernel = variables["params"]["kernel"]
  standard = (kernel - kernel.mean(axis=(0, 1, 2))) / jnp.sqrt(kernel.var(axis=(0, 1, 2)) + 1e-8)
  want = nn.Conv(4, (3, 3), use_bias=False).apply({"params": {"kernel": standard}}, x)
  np.testing.assert_allclose(conv.apply(variables, x), want, rtol=1e-5, atol=1e-5)


def test_bit_stem_pads_the_max_pool_with_zeros():
  """BiT's root block pools the (not activated) convolution zero-padded; timm's resnetv2_50 with −∞."""
  x = -jnp.ones((1, 8, 8, 3))
  kernel = {"stem_conv": {"kernel": jnp.ones((7, 7, 3, 2)) / 147}}
  bit = models.BiTStem(width=2, conv=models.he_conv).apply({"params": kernel}, x)
  preact = models.PreActStem(width=2, conv=models.he_conv).apply({"params": kernel}, x)
  assert bit.shape == preact.shape == (1, 2, 2, 2)
  assert float(bit.max()) == 0.0 and float(preact.max()) < 0.0


def test_norm_options_reach_the_norm_and_replace_the_bn_fields():
  model = models.create("cifar_resnet20", norm_options={"momentum": 0.5, "epsilon": 1e-3, "group_size": 2,
                                                        "unbiased_variance": True})
  _, norm, _, _ = model._layers()  # pylint: disable=protected-access
  bn = norm(name="bn")
  assert (bn.momentum, bn.epsilon, bn.group_size, bn.unbiased_variance) == (0.5, 1e-3, 2, True)
  group = models.create("cifar_resnet20", norm="group", norm_options={"num_groups": 4, "epsilon": 1e-5})
  gn = group._layers()[1](name="gn")  # pylint: disable=protected-access
  assert (gn.num_groups, gn.epsilon) == (4, 1e-5)
  for fields, pattern in [
      ({"norm": "layer", "norm_options": {"momentum": 0.9}}, r"norm_options 'momentum' does not apply to "
                                                             r"norm='layer' \(takes epsilon, "),
      ({"norm_options": {"epsilon": 0}}, r"norm option epsilon=0 must be a positive number"),
      ({"norm_options": {"momentum": 2}}, r"norm option momentum=2 must be a number in \[0.0, 1.0\]"),
      ({"norm_options": {"group_size": 0}}, r"norm option group_size=0 must be a positive integer or None"),
      ({"norm_options": ["momentum"]}, r"norm_options=\['momentum'\] must be a mapping"),
  ]:
    with pytest.raises(errors.InputError, match=pattern) as info:
      models.create("cifar_resnet20", **fields)
    assert "\n" not in str(info.value)


def test_option_mappings_update_the_named_networks_and_go_with_their_part():
  assert models.create("resnetv2_50x1_bit", norm_options={"num_groups": 8}).norm_options == {
      "epsilon": 1e-5, "num_groups": 8}
  assert models.create("resnetrs50", attention_options={"divisor": 1}).attention_options == {
      "ratio": 0.25, "divisor": 1}
  assert models.create("resnetv2_50x1_bit", norm="batch").norm_options is None   # GroupNorm's, gone with it
  assert models.create("resnet50d", shortcut="C").shortcut_options is None
  assert models.create("resnet50d", shortcut="B").shortcut_options == {"avg_down": True}  # the same part


def test_models_lists_the_new_networks(capsys):
  assert cli.main(["models", "--filter", "resnetrs"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [line.split()[0] for line in lines[1:]] == ["resnetrs101", "resnetrs152", "resnetrs200", "resnetrs50"]
  assert lines[-1].split()[2] == "35,691,912"   # timm's resnetrs50: 35,691,912 parameters


# The networks issue 33 adds, by timm's names.
NEW_NETWORKS = ("resnet18d", "resnet34d", "resnet26d", "resnet50d", "resnet101d", "resnet152d", "resnet200d",
                "resnext50d_32x4d", "resnet50c", "seresnet50", "seresnet101", "seresnext50_32x4d",
                "seresnext101_32x4d", "ecaresnet50d", "ecaresnet101d", "resnetrs50", "resnetrs101", "resnetrs152",
                "resnetrs200", "resnetv2_50x1_bit", "resnetv2_101x1_bit", "resnetv2_50x3_bit", "resnetv2_50")


def test_every_new_network_has_published_imagenet_numbers():
  for name in NEW_NETWORKS:
    results = [paper.IMAGENET_2018_2021.get((name, kind)) for kind in ("paper", "timm")]
    assert any(results), name
    for result in filter(None, results):
      assert 10.0 < result.error < 30.0 and ("Table" in result.source or "results-imagenet.csv" in result.source
                                             or "Bello et al. 2021" in result.source), (name, result)
