"""The ResNets of 2018–2021 compute timm's functions, and rj.interop reads and writes timm's weights.

`tests/fixtures/timm_reference.npz` (see its generator, `make_timm_reference.py`) holds what
timm's own classes compute with weights drawn from each key's name and shape
(`timm_state.timm_leaf`): this file draws the same weights, converts them with
`resnet_jax.interop`, and compares. Each family is reduced (one unit per stage, narrow),
built from the same code paths as its named networks; every full-size named network is
compared by its key names, shapes and parameter count (abstractly). The full-size logits
were compared once, by `tests/fixtures/report_timm_full.py` (`timm_full_report.json`).
"""
from __future__ import annotations

import json
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from resnet_jax import errors, interop, models

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import timm_state  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.usefixtures("fast_compile")  # what the networks are, not their speed

REFERENCE = np.load(FIXTURES / "timm_reference.npz")
NARROW = {"stage_sizes": (1, 1, 1, 1), "stage_widths": (8, 16, 32, 64), "num_classes": 7}
DEEP = {**NARROW, "stem_width": 16}     # timm's deep stem 8-8-16
GROUPED = {"cardinality": 2, "bottleneck_width": 4}
# fixture variant -> (our registry name, overrides that reduce it as the fixture reduced timm's)
REDUCED = {
    "resnet18d": ("resnet18d", DEEP),
    "resnet50d": ("resnet50d", DEEP),
    "resnet50c": ("resnet50c", DEEP),
    "resnext50d_32x4d": ("resnext50d_32x4d", {**DEEP, **GROUPED}),
    "seresnet50": ("seresnet50", NARROW),
    "seresnext50_32x4d": ("seresnext50_32x4d", {**NARROW, **GROUPED}),
    "ecaresnet50d": ("ecaresnet50d", DEEP),
    "resnetrs50": ("resnetrs50", DEEP),
    "resnetblur50": ("resnetblur50", NARROW),
    "resnetaa50": ("resnetaa50", NARROW),
    "resnetblur18": ("resnetblur50", {**NARROW, "block": "basic"}),
    "resnet50_gn": ("resnet50_gn", {**NARROW, "stage_widths": (32, 64, 128, 256)}),
    "resnet50d_os8": ("resnet50d", {**DEEP, "output_stride": 8}),
    "resnet18_os16": ("resnet18", {**NARROW, "output_stride": 16}),
    "resnetv2_50x1_bit": ("resnetv2_50x1_bit", {**DEEP, "norm_options": {"num_groups": 4}}),
    "resnetv2_50": ("resnetv2_50", DEEP),
}
# PyTorch's BatchNorm: momentum 0.1 of the new statistics, unbiased running variance.
TORCH_BN = {"momentum": 0.9, "unbiased_variance": True}
FULL = sorted(k.split("/")[1] for k in REFERENCE.files if k.startswith("full/") and k.endswith("/shapes"))


def _shapes(prefix):
  return timm_state.unpack_shapes(REFERENCE[f"{prefix}/shapes"])


def _without_counters(shapes):
  return {k: v for k, v in shapes.items() if not k.endswith(timm_state.IGNORED)}


def _relative(got, want):
  return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def _reduced(variant, **extra):
  """(our name, the reduced network, its variables converted from timm's state dict)."""
  name, overrides = REDUCED[variant]
  state = timm_state.state_dict(_shapes(f"reduced/{variant}"))
  overrides = {**overrides, **extra}
  return name, overrides, state, interop.from_timm(state, name, **overrides)


@pytest.mark.parametrize("variant", sorted(REDUCED))
def test_eval_logits_of_each_family_equal_timm(variant):
  """Eval-mode logits within 1e-5 of timm's, and the state dict goes back exactly (round trip)."""
  name, overrides, state, variables = _reduced(variant)
  model = models.create(name, **overrides)
  assert interop.state_shapes(model, name) == _without_counters(_shapes(f"reduced/{variant}"))
  logits = jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(REFERENCE["images"]))
  assert _relative(logits, REFERENCE[f"reduced/{variant}/eval_logits"]) < 1e-5
  back = interop.to_timm(variables, name, **overrides)
  assert sorted(back) == sorted(_shapes(f"reduced/{variant}"))
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.mark.parametrize("variant", ["resnet50d", "seresnet50"])
def test_train_mode_logits_and_bn_statistics_equal_timm(variant):
  name, overrides, _, variables = _reduced(variant, norm_options=TORCH_BN)
  model = models.create(name, **overrides)
  step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  logits, updates = step(variables, jnp.asarray(REFERENCE["images"]))
  assert _relative(logits, REFERENCE[f"reduced/{variant}/train_logits"]) < 1e-5
  after = interop.to_timm({"params": variables["params"], "batch_stats": updates["batch_stats"]}, name,
                          **overrides)
  prefix = f"reduced/{variant}/after_train/"
  stats = [k for k in REFERENCE.files if k.startswith(prefix)]
  assert len(stats) == 2 * sum(k.endswith("running_var") for k in after)
  for key in stats:
    np.testing.assert_allclose(after[key[len(prefix):]], REFERENCE[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_every_full_size_network_has_timms_keys_shapes_and_parameter_count():
  """What from_timm reads and to_timm writes is timm's state dict, key for key, for every network."""
  assert len(FULL) >= 39 and set(interop.TIMM.values()) == set(FULL)
  for theirs in FULL:
    ours = interop.split_tag(theirs)[0] if theirs in interop.TIMM else {t: o for o, t in interop.TIMM.items()}[theirs]
    model = models.create(ours)
    assert interop.state_shapes(model, ours) == _without_counters(_shapes(f"full/{theirs}")), theirs
    assert models.size(model, (1, 64, 64, 3))[0] == int(REFERENCE[f"full/{theirs}/params"]), theirs


def test_full_size_logits_were_checked_against_timm_for_every_network():
  """The one-off full-size comparison (report_timm_full.py) covered every network, within 1e-5."""
  report = json.loads((FIXTURES / "timm_full_report.json").read_text())
  assert sorted(report["networks"]) == FULL
  for theirs, row in report["networks"].items():
    assert row["max_relative_logit_difference"] < 1e-5 and row["round_trip_exact"], theirs


def test_timm_safetensors_with_tags_and_config_json(tmp_path):
  """A timm checkpoint as the hub stores it: model.safetensors, config.json naming its architecture."""
  _, overrides, state, variables = _reduced("resnetblur50")
  save_file(state, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnetblur50", "num_classes": 7}))
  net = interop.pretrained("resnetblur50.bt_in1k", tmp_path / "model.safetensors", **overrides)
  assert net.name == "resnetblur50"
  x = jnp.asarray(REFERENCE["images"])
  assert _relative(net.model.apply(net.variables, x), REFERENCE["reduced/resnetblur50/eval_logits"]) < 1e-5
  # resnetblur50's keys are resnet50's: only config.json tells them apart, and it is heeded.
  with pytest.raises(interop.ConversionError, match=r"config.json says timm's 'resnetblur50' .*not "
                     r"'resnet50_v1_5'.* pass 'resnetblur50'") as info:
    interop.pretrained("resnet50.a1_in1k", tmp_path / "model.safetensors", **overrides)
  assert "\n" not in str(info.value)
  plain = models.create("resnet50_v1_5", **overrides)
  assert _relative(plain.apply(net.variables, x), REFERENCE["reduced/resnetblur50/eval_logits"]) > 1e-3
  (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnest50d"}))
  with pytest.raises(interop.ConversionError, match=r"'resnest50d', which we do not have; supported: resnet18"):
    interop.load(tmp_path / "model.safetensors", "resnetblur50", **overrides)


@pytest.mark.parametrize("name", ["resnest50d", "skresnet18", "seresnet152d"])
def test_a_timm_network_we_do_not_have_is_refused_in_one_line(name):
  with pytest.raises(errors.InputError, match=rf"no torchvision equivalent for '{name}'; supported: .*resnet50d") as info:
    interop.from_timm({}, name)
  assert "\n" not in str(info.value)


def test_tagged_timm_names_are_timms_networks_without_a_warning():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert interop.our_name("resnet50.a1_in1k") == "resnet50_v1_5"
    assert interop.our_name("resnet50d.ra2_in1k") == "resnet50d"
    assert interop.our_name("resnetv2_50x1_bit.goog_in21k_ft_in1k") == "resnetv2_50x1_bit"
  with pytest.warns(FutureWarning, match="pass 'resnet200_v1_5'"):
    assert interop.our_name("resnet200") == "resnet200_v1_5"


def test_exporting_the_papers_resnet50_under_torchvisions_name_is_refused():
  variables = {"params": {"head": {"kernel": np.zeros((2048, 1000), np.float32)}}}
  with pytest.raises(interop.ConversionError, match=r"our 'resnet50' is He et al.'s network .* pass 'resnet50_v1_5'"):
    interop.to_torchvision(variables, "resnet50")
  with pytest.raises(interop.ConversionError, match=r"torchvision has no 'resnet50d' \(timm has: use rj.interop.to_timm\)"):
    interop.to_torchvision(variables, "resnet50d")
  assert issubclass(interop.ConversionError, errors.InputError)
