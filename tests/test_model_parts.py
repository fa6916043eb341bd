"""Named model parts (one table per kind, one resolver) and shortcut options as one mapping."""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import errors, models

pytestmark = pytest.mark.usefixtures("fast_compile")  # what the networks are, not their speed
X = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))


def tiny(**overrides):
  return models.create("cifar_resnet20", stage_sizes=(1, 1), stage_widths=(4, 8), stem_width=4, **overrides)


def _init(model):
  return model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, X, train=False)


@pytest.mark.parametrize("table, name", [(models.NORMS, "batch"), (models.CONVS, "conv"),
                                         (models.ACTIVATIONS, "relu"), (models.STEMS, "cifar"),
                                         (models.BLOCKS, "basic"), (models.SHORTCUTS, "A"),
                                         (models.IDENTITY_INITS, "fixup"), (models.NORMS, "none")])
def test_every_kind_resolves_names_and_parts_the_same_way(table, name):
  part = table.resolve(name)
  assert table.resolve(part) is part and table.name_of(part) == name and name in table
  with pytest.raises(ValueError, match=rf"unknown {table.kind} 'nope': valid choices are .*{name}.* or "):
    table.resolve("nope")


def test_a_registered_norm_is_usable_by_name_from_a_config():
  norm = models.flax_norm(nn.GroupNorm, num_groups=2)
  models.NORMS.register("group2", norm)
  try:
    variables = _init(tiny(norm="group2"))
    assert set(variables) == {"params"} and "batch_stats" not in variables
  finally:
    del models.NORMS._parts["group2"]  # pylint: disable=protected-access
  with pytest.raises(TypeError, match="expected a norm constructor"):
    models.NORMS.register("bad", "not a constructor")


@pytest.mark.parametrize("field, group", [
    ("downsample", "shortcut_options"), ("shortcut_scale", "shortcut_options"), ("scale_residual", "shortcut_options"),
    ("gate_bias_init", "shortcut_options"), ("shortcut_dropout_rate", "shortcut_options"),
    ("bn_momentum", "norm_options"), ("bn_epsilon", "norm_options"), ("bn_axis_name", "norm_options"),
    ("bn_group_size", "norm_options"), ("bn_unbiased_variance", "norm_options"),
])
def test_the_flat_shortcut_and_bn_fields_are_gone_and_their_option_groups_are_named(field, group):
  with pytest.raises(errors.InputError, match=rf"unknown model field '{field}'.*valid fields: .*{group}") as info:
    tiny(**{field: 1})
  assert "\n" not in str(info.value)


def test_the_options_reach_the_shortcut_module():
  variables = _init(tiny(shortcut="gate", shortcut_options={"gate_bias_init": -3.5}))
  assert np.all(variables["params"]["stage1_unit1"]["shortcut"]["gate_conv"]["bias"] == -3.5)
  b = models.count_params(_init(tiny(shortcut="scale", shortcut_options={"downsample": "B"})))
  a = models.count_params(_init(tiny(shortcut="scale")))
  assert b == a + 4 * 8 + 16  # downsample B: a 1×1 projection 4→8 + BN where the shape changes


@pytest.mark.parametrize("shortcut, options, pattern", [
    ("A", {"rate": 0.5}, r"shortcut_options 'rate' does not apply to shortcut='A' \(takes no options\)"),
    ("scale", {"gate_bias_init": 1.0}, r"'gate_bias_init' does not apply to shortcut='scale' \(takes downsample, "
                                      r"scale, scale_residual\)"),
    ("C", {"always": False}, r"'always' does not apply to shortcut='C'"),  # the name decides it
    ("dropout", {"rate": 1.5}, r"shortcut option rate=1.5 must be a number in \[0.0, 1.0\)"),
    ("scale", {"scale": "half"}, r"shortcut option scale='half' must be a number"),
    ("gate", {"downsample": "Z"}, r"shortcut option downsample='Z' must be 'A' \(zero-pad\) or 'B'"),
])
def test_bad_shortcut_options_are_one_line_errors(shortcut, options, pattern):
  with pytest.raises(ValueError, match=pattern) as info:
    tiny(shortcut=shortcut, shortcut_options=options)
  assert "\n" not in str(info.value)


def test_a_user_shortcut_factory_receives_the_options():
  seen = {}

  class Halved(models.Shortcut):
    factor: float = 1.0

    @nn.compact
    def __call__(self, x, residual, *, train, preactivated=None):
      seen["factor"] = self.factor
      return models.zero_pad_identity(x, self.features, self.strides) * self.factor + residual

  _init(tiny(shortcut=Halved, shortcut_options={"factor": 0.5}))
  assert seen["factor"] == 0.5


def test_make_shortcut_keeps_its_signature_and_binds_only_what_a_shortcut_reads():
  factory = models.make_shortcut("gate", gate_bias_init=-1.0, scale=0.9)
  assert factory.func is models.GatedShortcut
  assert factory.keywords == {"exclusive": True, "downsample": "A", "gate_bias_init": -1.0}
  assert models.make_shortcut("A") is models.ZeroPadShortcut
  assert models.shortcut_factory("C").keywords == {"always": True}
