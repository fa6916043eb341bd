"""torchvision / timm weights in and out (resnet_jax.interop), numerically checked.

`tests/fixtures/torchvision_reference.npz` holds tiny networks built with torchvision's own
ResNet class (see its generator): converted, our networks must give the same eval logits,
train-mode logits and updated running statistics. The full-size networks are compared with
real torchvision where it is installed (`-m slow`, skipped otherwise).
"""
from __future__ import annotations

import importlib.util
import logging
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import interop
from resnet_jax import models
from resnet_jax.data.preprocessing import Preprocessing
from resnet_jax.train.trained import TrainedNetwork

pytestmark = pytest.mark.usefixtures("fast_compile")  # what the networks are, not their speed

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REFERENCE = np.load(FIXTURES / "torchvision_reference.npz")
SMALL = {"stage_sizes": (1, 1, 1, 1), "stage_widths": (4, 8, 16, 32), "stem_width": 4}
# fixture variant -> (our registry name, overrides that shrink it like the fixture)
VARIANTS = {
    "basic": ("resnet18", SMALL),
    "bottleneck": ("resnet50_v1_5", SMALL),
    "grouped": ("resnext50_32x4d", {**SMALL, "cardinality": 2, "bottleneck_width": 2}),
    "wide": ("wide_resnet50_2", SMALL),
}


def _state_dict(variant):
  prefix = f"{variant}/state/"
  return {k[len(prefix):]: REFERENCE[k] for k in REFERENCE.files if k.startswith(prefix)}


def _random_variables(model, seed=0):
  """Every variable of `model` drawn at random in numpy (no init compile for big nets)."""
  rng = np.random.default_rng(seed)
  abstract = models.abstract_variables(model, (1, 224, 224, 3))
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tiny_torchvision_networks_compute_the_same_function(variant):
  name, small = VARIANTS[variant]
  variables = interop.from_torchvision(_state_dict(variant), name, **small)
  model = interop.torchvision_model(name, num_classes=7, norm_options={"unbiased_variance": True}, **small)
  x = jnp.asarray(REFERENCE["images"])
  want = REFERENCE[f"{variant}/eval_logits"]
  np.testing.assert_allclose(model.apply(variables, x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  want = REFERENCE[f"{variant}/train_logits"]
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  after = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
  converted = interop.to_torchvision(after, name, **small)
  for key in converted:
    if key.endswith(("running_mean", "running_var")):
      np.testing.assert_allclose(converted[key], REFERENCE[f"{variant}/after_train/{key}"], rtol=1e-5,
                                 atol=1e-6, err_msg=key)
  # The exported state dict has exactly torchvision's keys, shapes and dtypes.
  original = _state_dict(variant)
  assert sorted(converted) == sorted(original)
  for key, value in original.items():
    assert converted[key].shape == value.shape and converted[key].dtype == value.dtype, key


@pytest.mark.parametrize("name", sorted(interop.TORCHVISION))
def test_round_trip_is_bit_exact(name):
  model = interop.torchvision_model(name)
  variables = _random_variables(model)
  state_dict = interop.to_torchvision(variables, name)
  assert all(isinstance(v, np.ndarray) for v in state_dict.values())
  back = interop.from_torchvision(state_dict, name)
  for a, b in zip(jax.tree_util.tree_leaves_with_path(variables), jax.tree_util.tree_leaves_with_path(back),
                  strict=True):
    assert a[0] == b[0]
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


def test_mismatched_state_dict_lists_missing_unexpected_and_shapes():
  state = _state_dict("basic")
  state.pop("layer2.0.conv1.weight")
  state["layer9.0.conv1.weight"] = np.zeros((1,))
  state["fc.weight"] = np.zeros((7, 31), np.float32)
  with pytest.raises(interop.ConversionError) as info:
    interop.from_torchvision(state, "resnet18", **SMALL)
  message = str(info.value)
  assert "resnet18" in message and "1 missing: layer2.0.conv1.weight" in message
  assert "1 unexpected: layer9.0.conv1.weight" in message
  assert "of another shape: fc.weight (7, 31) (ours head/kernel (32, 7))" in message
  with pytest.raises(interop.ConversionError, match=r"missing: .*layer1\.0\.bn3"):  # a basic net is not a resnet50
    interop.from_torchvision(_state_dict("basic"), "resnet50_v1_5", **SMALL)
  with pytest.raises(ValueError, match=r"no torchvision equivalent for 'cifar_resnet20'; supported: resnet18"):
    interop.from_torchvision(state, "cifar_resnet20")


def test_load_safetensors_npz_and_a_clear_error_for_pth_without_torch(tmp_path, monkeypatch):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  state = _state_dict("bottleneck")
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / "w.safetensors"))
  np.savez(tmp_path / "w.npz", **state)
  a = interop.load(tmp_path / "w.safetensors", "resnet50_v1_5", **SMALL)
  b = interop.load(tmp_path / "w.npz", "resnet50_v1_5", **SMALL)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  (tmp_path / "w.pth").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"needs PyTorch: pip install 'resnetax\[torch\]'"):
    interop.load(tmp_path / "w.pth", "resnet50_v1_5", **SMALL)
  with pytest.raises(ValueError, match=r"unknown checkpoint format '.h5'"):
    (tmp_path / "w.h5").write_bytes(b"")
    interop.load(tmp_path / "w.h5", "resnet50_v1_5")


def test_pretrained_new_head_and_headless_backbone(tmp_path, caplog):
  np.savez(tmp_path / "w.npz", **_state_dict("basic"))
  x = jnp.asarray(REFERENCE["images"])
  model, variables = interop.pretrained("resnet18", tmp_path / "w.npz", **SMALL)
  assert model.num_classes == 7
  _, features = model.apply(variables, x, return_features=True)
  with caplog.at_level(logging.WARNING):
    tuned, tuned_vars = interop.pretrained("resnet18", tmp_path / "w.npz", num_classes=3, **SMALL)
  assert "classifier was dropped; a new 3-class head" in caplog.text
  assert tuned.apply(tuned_vars, x).shape == (2, 3) and tuned_vars["params"]["head"]["kernel"].shape == (32, 3)
  for key in ("stem_conv", "stage4_unit1"):  # the backbone is the checkpoint's
    for p, q in zip(jax.tree.leaves(tuned_vars["params"][key]), jax.tree.leaves(variables["params"][key])):
      np.testing.assert_array_equal(p, q)
  backbone, backbone_vars = interop.pretrained("resnet18", tmp_path / "w.npz", num_classes=0, **SMALL)
  assert "head" not in backbone_vars["params"]
  np.testing.assert_allclose(backbone.apply(backbone_vars, x), features["pre_logits"], rtol=1e-6)


def test_resnet50_names_one_network_and_torchvisions_name_is_loud():
  """torchvision's "resnet50" is our resnet50_v1_5 (stride on the 3×3); our resnet50 is the paper's."""
  state = _state_dict("bottleneck")
  x = jnp.asarray(REFERENCE["images"])
  net = interop.pretrained("resnet50_v1_5", state, **SMALL)
  assert net.name == "resnet50_v1_5" and net.model.stride_on == "conv3x3" and net.source == "a state dict"
  want = REFERENCE["bottleneck/eval_logits"]
  same = models.create("resnet50_v1_5", num_classes=7, **SMALL)  # the name builds the network of the weights
  np.testing.assert_allclose(same.apply(net.variables, x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  paper = models.create("resnet50", num_classes=7, **SMALL)    # what the other "resnet50" would compute
  assert np.abs(paper.apply(net.variables, x) - want).max() > 1e-3 * np.abs(want).max()

  with pytest.warns(FutureWarning, match=r"'resnet50' is torchvision's name of our 'resnet50_v1_5' .*"
                    r"rj.models.create\('resnet50'\) is He et al.'s network .* pass 'resnet50_v1_5'"):
    variables = interop.from_torchvision(state, "resnet50", **SMALL)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(net.variables), strict=True):
    np.testing.assert_array_equal(a, b)
  with pytest.warns(FutureWarning, match="pass 'resnet50_v1_5'"):
    assert interop.pretrained("resnet50", state, **SMALL).model.stride_on == "conv3x3"

  # The paper's stride placement has no torchvision counterpart: refused both ways.
  with pytest.raises(interop.ConversionError, match=r"stride on the 3×3 .*this network has stride_on='conv1x1'"):
    interop.from_torchvision(state, "resnet50_v1_5", stride_on="conv1x1", **SMALL)
  ours = TrainedNetwork(paper, net.variables, Preprocessing.imagenet(), name="resnet50", source="test")
  with pytest.raises(interop.ConversionError, match="stride_on='conv1x1'"):
    interop.to_torchvision(ours)
  exported = interop.to_torchvision(net)
  assert sorted(exported) == sorted(state)


def test_pretrained_hands_back_torchvisions_imagenet_preprocessing(tmp_path):
  np.savez(tmp_path / "w.npz", **_state_dict("basic"))
  net = interop.pretrained("resnet18", tmp_path / "w.npz", **SMALL)
  assert net.source == str(tmp_path / "w.npz")
  p = net.preprocessing
  assert (p.input_size, p.resize_size, p.interpolation) == ((224, 224), 256, "bilinear")
  np.testing.assert_allclose(p.mean, [0.485, 0.456, 0.406])
  np.testing.assert_allclose(p.std, [0.229, 0.224, 0.225])
  images = np.random.default_rng(0).integers(0, 256, (2, 300, 400, 3)).astype(np.uint8)
  np.testing.assert_allclose(net(images), net.model.apply(net.variables, p(images)), rtol=1e-5, atol=1e-5)


HAS_TORCHVISION = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TORCHVISION, reason="needs torch and torchvision (pip install -e '.[reference]')")
@pytest.mark.parametrize("name", sorted(interop.TORCHVISION))
def test_full_size_networks_equal_torchvision(name):
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = getattr(torchvision.models, interop.TORCHVISION[name])(weights=None)
  rng = np.random.default_rng(0)
  with torch.no_grad():  # non-trivial BN statistics and affine parameters
    for key, tensor in net.state_dict().items():
      if key.endswith("running_var"):
        tensor.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, tensor.shape).astype(np.float32)))
      elif key.endswith("running_mean") or (key.endswith(".bias") and "bn" in key):
        tensor.copy_(torch.from_numpy(0.1 * rng.standard_normal(tensor.shape).astype(np.float32)))
  variables = interop.from_torchvision(net.state_dict(), name)
  model = interop.torchvision_model(name, norm_options={"unbiased_variance": True})
  x = rng.standard_normal((2, 224, 224, 3)).astype(np.float32)
  net.eval()
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  got = np.asarray(model.apply(variables, jnp.asarray(x)))
  diff = float(np.abs(got - want).max() / np.abs(want).max())
  print(f"{name}: eval logits max difference {diff:.2e} of the largest logit")
  assert diff < 1e-5
  exported = interop.to_torchvision(variables, name)
  missing, unexpected = net.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
  assert not missing and not unexpected


class _FakeTorch:
  """A stand-in `torch` module of a given version (torch itself is an optional extra)."""

  def __init__(self, version, state_dict=None):
    self.__version__ = version
    self.state_dict = state_dict

  def load(self, path, map_location=None, weights_only=None):
    assert weights_only is True and map_location == "cpu"
    return self.state_dict


def test_pth_needs_a_torch_whose_weights_only_loading_is_safe(tmp_path, monkeypatch):
  (tmp_path / "w.pth").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", _FakeTorch("2.5.1+cu121"))
  with pytest.raises(ImportError, match=r"needs torch >= 2.6, found 2.5.1\+cu121: .*CVE-2025-32434") as info:
    interop.load(tmp_path / "w.pth", "resnet50", **SMALL)
  assert "\n" not in str(info.value)
  state = _state_dict("bottleneck")
  monkeypatch.setitem(sys.modules, "torch", _FakeTorch("2.6.0+cpu", {"state_dict": state}))
  variables = interop.load(tmp_path / "w.pth", "resnet50", **SMALL)
  np.testing.assert_array_equal(variables["params"]["stem_conv"]["kernel"],
                                state["conv1.weight"].transpose(2, 3, 1, 0))


def test_nan_inf_and_integer_tensors_in_a_weights_file_are_named_in_a_warning(tmp_path):
  state = dict(_state_dict("basic"))
  state["conv1.weight"] = state["conv1.weight"].copy()
  state["conv1.weight"][0, 0, 0, 0] = np.nan
  state["fc.bias"] = np.full_like(state["fc.bias"], np.inf)
  state["bn1.weight"] = state["bn1.weight"].astype(np.int64)
  np.savez(tmp_path / "w.npz", **state)
  with pytest.warns(interop.SuspiciousWeightsWarning) as caught:
    interop.load(tmp_path / "w.npz", "resnet18", **SMALL)
  messages = [str(w.message) for w in caught]
  assert any("NaN/Inf values in 2 tensors: conv1.weight, fc.bias" in m for m in messages), messages
  assert any("integer tensors where weights are floats" in m and "bn1.weight (int64)" in m for m in messages)
  np.savez(tmp_path / "clean.npz", **_state_dict("basic"))  # num_batches_tracked is an integer by design
  with warnings.catch_warnings():
    warnings.simplefilter("error", interop.SuspiciousWeightsWarning)
    interop.load(tmp_path / "clean.npz", "resnet18", **SMALL)
