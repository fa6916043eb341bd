"""The eval-time preprocessing as data (resnet_jax.data.preprocessing): the transform, its file, its errors."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import augment
from resnet_jax.storage.workdir import Workdir
from resnet_jax.train import load
from resnet_jax.data.preprocessing import Preprocessing


def test_per_pixel_mean_is_the_cifar_eval_transform_and_survives_its_file(tmp_path):
  rng = np.random.default_rng(0)
  mean = rng.random((32, 32, 3)).astype(np.float32)
  recorded = Preprocessing(mean, np.ones(3), (32, 32), description="a mean image")
  images = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
  pipeline_eval = lambda x: augment.cifar_preprocess(x, None, False, mean=mean, std=np.ones(3, np.float32),
                                                     augment=True, padding=4)
  np.testing.assert_array_equal(jax.jit(recorded)(images), jax.jit(pipeline_eval)(images))
  np.testing.assert_array_equal(recorded(images), pipeline_eval(images))
  read = load.read_preprocessing(load.record_preprocessing_of(Workdir(tmp_path), recorded).parent)
  np.testing.assert_array_equal(read.mean, mean)  # every float32 bit, from the shortest decimals
  assert (read.input_size, read.resize_size, read.description) == ((32, 32), None, "a mean image")
  assert load.read_preprocessing(tmp_path / "elsewhere") is None


def test_imagenet_resize_and_center_crop_match_pillow_within_a_grey_level():
  """torchvision's Resize(256) + CenterCrop(224) (Pillow, antialiased bilinear) of a 375×500 image."""
  small = np.random.default_rng(0).integers(0, 256, (12, 16, 3)).astype(np.uint8)
  image = np.asarray(Image.fromarray(small).resize((500, 375), Image.BICUBIC))
  ours = np.asarray(Preprocessing.imagenet()(jnp.asarray(image[None])))[0]
  resized = np.asarray(Image.fromarray(image).resize((341, 256), Image.BILINEAR))  # 256 × int(256·500/375)
  want = (resized[16:240, 58:282] / 255.0 - augment.IMAGENET_MEAN) / augment.IMAGENET_STD
  grey_levels = np.abs(ours - want) * augment.IMAGENET_STD * 255
  assert grey_levels.mean() < 0.5 and grey_levels.max() <= 1.01, (grey_levels.mean(), grey_levels.max())
  # Already at the resize size: only the center crop.
  square = np.random.default_rng(1).integers(0, 256, (2, 256, 256, 3)).astype(np.uint8)
  np.testing.assert_array_equal(Preprocessing.imagenet()(square),
                                augment.normalize(square[:, 16:240, 16:240], augment.IMAGENET_MEAN,
                                                  augment.IMAGENET_STD))


@pytest.mark.parametrize("fields, message", [
    (dict(mean=np.zeros((16, 16, 3)), std=np.ones(3), input_size=(32, 32)), r"mean of shape \(16, 16, 3\) must be"),
    (dict(mean=np.zeros(3), std=np.array([1.0, 0.0, 1.0]), input_size=(32, 32)), "must be 3 positive numbers"),
    (dict(mean=np.zeros(3), std=np.ones(3), input_size=(224, 224), resize_size=200), "smaller than input_size"),
    (dict(mean=np.zeros(3), std=np.ones(3), input_size=(224, 224), interpolation="nearest"),
     r"interpolation='nearest' is not one of \('bilinear', 'bicubic'\)"),
])
def test_bad_values_are_one_line_errors(fields, message):
  with pytest.raises(ValueError, match=message):
    Preprocessing(**fields)


def test_images_of_another_size_or_layout_are_refused():
  cifar = Preprocessing(np.zeros((32, 32, 3)), np.ones(3), (32, 32))
  with pytest.raises(ValueError, match=r"expected 32×32 images \(this network's input\), got 28×28"):
    cifar(np.zeros((1, 28, 28, 3), np.uint8))
  with pytest.raises(ValueError, match=r"NHWC\), got shape \(1, 3, 32, 32\)"):
    cifar(np.zeros((1, 3, 32, 32), np.uint8))


def test_an_unreadable_file_names_itself_and_the_fix(tmp_path):
  (tmp_path / Workdir.PREPROCESSING).write_text(json.dumps({"mean": [0.5]}))
  with pytest.raises(ValueError, match=r"preprocessing.json is unreadable \(KeyError.*record_preprocessing"):
    load.read_preprocessing(tmp_path)
