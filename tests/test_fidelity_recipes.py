"""The papers' recipes as the configs and the engine implement them (issue: paper fidelity).

Each test pins one published choice: its source is in the recipe table,
resnet_jax/configs/README.md.
"""
from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import configs
from resnet_jax import models
from resnet_jax import paper
from resnet_jax import train as rt
from resnet_jax.data import augment

# The papers' ImageNet configs (the modern recipes of paper.RECIPES are test_recipes.py's).
IMAGENET = [n for n in configs.names() if n.startswith("imagenet_") and n not in paper.RECIPES]


def test_batchnorm_groups_are_the_papers_per_gpu_batches():
  """He et al. 2015/2016: 128 on 2 GPUs; ImageNet 256 on 8; ResNeXt CIFAR 128 on 8."""
  expected = {"cifar10_resnet20": 64, "cifar10_resnet110": 64, "cifar10_plain56": 64,
              "cifar10_preact_resnet164": 64, "cifar100_preact_resnet1001": 64,
              "cifar10_resnext29_8x64d": 16, "cifar100_resnext29_16x64d": 16,
              "imagenet_resnet50": 32, "imagenet_plain34": 32, "imagenet_resnext101_32x4d": 32}
  for name, group in expected.items():
    c = configs.load(name)
    assert (c.bn.mode, c.bn.ghost_batch_size, c.bn.unbiased_variance) == ("ghost", group, True), name
    assert rt.build.model(c, 10).norm_options["group_size"] == group
  # Synchronised statistics over the whole batch stay one override away.
  assert rt.build.model(configs.load("cifar10_resnet20", {"bn.mode": "global"}), 10).norm_options["group_size"] is None


def test_every_identity_mappings_cifar_run_warms_up():
  """He et al. 2016, appendix: all CIFAR runs start at 0.01 for 400 iterations."""
  for name in ("cifar10_preact_resnet164", "cifar100_preact_resnet164", "cifar10_preact_resnet1001",
               "cifar100_preact_resnet1001", "cifar10_resnet110"):
    c = configs.load(name)
    schedule, _ = rt.build.optimizer(c, 390, 64000)
    assert [float(schedule(s)) for s in (0, 399, 400)] == pytest.approx([0.01, 0.01, 0.1]), name
  schedule, _ = rt.build.optimizer(configs.load("cifar10_resnet20"), 390, 64000)
  assert float(schedule(0)) == pytest.approx(0.1)  # He et al. 2015 warms up ResNet-110 only


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_recipes(name):
  """He et al. 2015 §3.4: scale augmentation and AlexNet lighting, momentum (Caffe). Xie et
  al. 2017 Table 3: fb.resnet.torch's pipeline (inception crop, jitter 0.4, lighting),
  Nesterov, stride on the 3×3."""
  c = configs.load(name)
  assert c.data.pca_lighting
  model = rt.build.model(c, 1000)
  if "resnext" in name:
    assert (c.data.train_augment, c.data.color_jitter, c.optimizer.nesterov) == ("inception", 0.4, True)
    assert model.stride_on == "conv3x3"
  else:
    assert (c.data.train_augment, c.data.color_jitter, c.optimizer.nesterov) == ("scale", 0.0, False)
    assert model.stride_on == "conv1x1"


def test_float16_is_refused_with_a_pointer_to_bfloat16():
  with pytest.raises(rt.ConfigError, match=r"dtype='float16' is not supported.*loss scaling.*use dtype='bfloat16'"):
    rt.validate(configs.load("cifar10_resnet20", {"dtype": "float16"}))


@pytest.mark.parametrize("devices,expected", [(1, 500), (8, 504), (16, 512), (256, 512), (3, 501)])
def test_eval_batch_rounds_up_to_the_device_count(devices, expected):
  assert rt.build.eval_batch_size(configs.load("cifar10_resnet20"), devices) == expected
  assert rt.build.eval_batch_size(configs.load("imagenet_resnet50"), 8) == 256


def test_classifier_init_is_torchs_uniform_with_zero_bias():
  """fb.resnet.torch: Torch7 nn.Linear weights U(±1/√fan_in), bias zeroed (torchvision: the same bound)."""
  model = models.create("resnet18")
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  kernel, bias = variables["params"]["head"]["kernel"], variables["params"]["head"]["bias"]
  bound = 1 / np.sqrt(512)
  assert float(jnp.abs(kernel).max()) <= bound and float(jnp.abs(kernel).max()) > 0.98 * bound
  assert float(jnp.std(kernel)) == pytest.approx(bound / np.sqrt(3), rel=0.02)  # uniform, not normal
  assert not jnp.any(bias)


@pytest.mark.parametrize("group", [None, 4])
def test_running_variance_uses_the_unbiased_batch_variance(group):
  """PyTorch/Torch7/Caffe: running_var ← m·running_var + (1−m)·var·n/(n−1); normalisation uses var."""
  x = jax.random.normal(jax.random.key(0), (8, 3, 3, 2)) * 2.0 + 1.0
  outs = {}
  for unbiased in (False, True):
    bn = models.BatchNorm(group_size=group, unbiased_variance=unbiased)
    v = bn.init(jax.random.key(1), x, train=False)
    y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
    outs[unbiased] = (y, upd["batch_stats"]["var"])
  np.testing.assert_array_equal(outs[False][0], outs[True][0])
  g = np.asarray(x).reshape(1 if group is None else 8 // group, -1, 2)  # [groups, examples·positions, C]
  n = g.shape[1]
  biased = g.var(axis=1).mean(axis=0)
  np.testing.assert_allclose(outs[False][1], 0.9 + 0.1 * biased, rtol=1e-5)
  np.testing.assert_allclose(outs[True][1], 0.9 + 0.1 * biased * n / (n - 1), rtol=1e-5)


def _lua_color_jitter(image: np.ndarray, alphas, order) -> np.ndarray:
  """fb.resnet.torch datasets/transforms.lua, Brightness / Contrast / Saturation in `order`."""
  img = image.astype(np.float64).copy()
  gray = lambda x: 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
  for t in order:
    a = alphas[t]
    if t == 0:
      target = np.zeros_like(img)
    elif t == 1:
      target = np.full_like(img, gray(img).mean())
    else:
      target = np.repeat(gray(img)[..., None], 3, axis=-1)
    img = img * a + (1 - a) * target
  return img


def test_color_jitter_is_fb_resnet_torch_s():
  images = jax.random.uniform(jax.random.key(0), (6, 8, 8, 3))
  key = jax.random.key(3)
  out = np.asarray(augment.color_jitter(images, key, 0.4))
  # The draws, as color_jitter makes them: alpha ~ U(0.6, 1.4) per image and transform, a random order.
  k_order, k_alpha = jax.random.split(key)
  alphas = np.asarray(1.0 + jax.random.uniform(k_alpha, (6, 3), jnp.float32, -0.4, 0.4))
  orders = np.asarray(jax.vmap(lambda k: jax.random.permutation(k, 3))(jax.random.split(k_order, 6)))
  assert len({tuple(o) for o in orders}) > 1 and (alphas >= 0.6).all() and (alphas <= 1.4).all()
  for i in range(6):
    np.testing.assert_allclose(out[i], _lua_color_jitter(np.asarray(images[i]), alphas[i], orders[i]),
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(augment.color_jitter(images, key, 0.0), images)


def test_ten_crop_evaluation_averages_the_softmax_of_the_ten_views():
  model = models.create("resnet18", stage_sizes=(1, 1, 1, 1), stage_widths=(4, 8, 8, 8), stem_width=4,
                        num_classes=5)
  images = jax.random.randint(jax.random.key(0), (4, 40, 40, 3), 0, 256).astype(jnp.uint8)
  labels = jnp.asarray([0, 1, 2, 3])
  variables = model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
  preprocess = lambda x, rng, train: x.astype(jnp.float32) / 255.0
  pipe = types.SimpleNamespace(config={"ten_crop": True}, image_shape=(32, 32, 3), num_classes=5,
                               preprocess=preprocess,
                               eval_iterator=lambda: iter([{"image": images, "label": labels,
                                                            "mask": jnp.asarray([True, True, True, False])}]))
  mesh = rt.create_mesh(jax.devices()[:1])
  from resnet_jax.train import evaluation  # pylint: disable=g-import-not-at-top
  out = evaluation.evaluate_params(evaluation.pipeline_eval_step(model, mesh, pipe), variables["params"],
                                     variables["batch_stats"], pipe, mesh)
  views = augment.ten_crop(preprocess(images, None, False), 32)
  probs = jnp.stack([jax.nn.softmax(model.apply(variables, v)) for v in views])       # [10, 4, 5]
  mean = probs.mean(0)[:3]
  center = probs[augment.TEN_CROP_CENTER][:3]
  assert out["num_examples"] == 3
  assert out["ten_crop_error"] == pytest.approx(100 * float(jnp.mean(jnp.argmax(mean, -1) != labels[:3])))
  assert out["error"] == pytest.approx(100 * float(jnp.mean(jnp.argmax(center, -1) != labels[:3])))
  assert out["ten_crop_loss"] == pytest.approx(float(-jnp.log(mean[jnp.arange(3), labels[:3]]).mean()), rel=1e-5)
  assert out["loss"] == pytest.approx(float(-jnp.log(center[jnp.arange(3), labels[:3]]).mean()), rel=1e-5)


def test_stochastic_depth_resnet110_is_the_papers_recipe():
  """Huang et al. 2016, §4 and the authors' main.lua: p_L = 0.5 with the linear rule, 500 epochs,
  lr 0.1 ÷10 at epochs 250 and 375, Nesterov momentum 0.9, wd 1e-4, 45k/5k split, one BN batch."""
  c = configs.load("cifar10_resnet110_stochastic_depth")
  model = rt.build.model(c, 10)
  assert model.stage_sizes == (18, 18, 18) and model.shortcut == "A"
  assert model.drop_path_rates()[0] == pytest.approx(0.5 / 54) and model.drop_path_rates()[-1] == 0.5
  assert (c.num_epochs, c.optimizer.nesterov, c.optimizer.momentum, c.optimizer.weight_decay) == (500, True, 0.9, 1e-4)
  schedule, _ = rt.build.optimizer(c, 352, 500 * 352)
  assert [float(schedule(e * 352)) for e in (0, 249, 250, 375)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
  assert (c.data.train_split, c.data.eval_split, c.bn.mode) == ("train[:45000]", "train[45000:]", "global")


def test_fixup_resnet110_is_the_authors_cifar_recipe():
  """Zhang et al. 2019 (cifar_train.py): no normalisation, 200 epochs, lr 0.1 ÷10 at 100 and 150,
  wd 1e-4, the scalar biases and multipliers (and the classifier's bias, whose name says bias) at lr/10."""
  c = configs.load("cifar10_fixup_resnet110")
  model = rt.build.model(c, 10)
  assert (model.norm, model.identity_init, model.stage_sizes) == ("none", "fixup", (18, 18, 18))
  schedule, tx = rt.build.optimizer(c, 391, 200 * 391)
  assert [float(schedule(e * 391)) for e in (0, 99, 100, 150)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
  params = {"stage1_unit1": {"conv1": {"kernel": jnp.ones(2)}, "bias1a": {"bias": jnp.ones(())},
                             "identity_init": {"scale": jnp.ones(())}}, "head": {"bias": jnp.ones(1)}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  step = lambda *path: float(np.ravel(_at(updates, path))[0])
  assert step("stage1_unit1", "conv1", "kernel") == pytest.approx(-0.1 * (1 + 1e-4))
  for path in (("stage1_unit1", "bias1a", "bias"), ("stage1_unit1", "identity_init", "scale"), ("head", "bias")):
    assert step(*path) == pytest.approx(-0.01 * (1 + 1e-4)), path


def _at(tree, path):
  for key in path:
    tree = tree[key]
  return tree
