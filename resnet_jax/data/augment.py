"""On-device preprocessing: pure, jittable functions of uint8 batches (called inside the train step).

CIFAR (He et al. 2015 §4.2): "4 pixels are padded on each side, and a 32×32 crop is randomly
sampled from the padded image or its horizontal flip", inputs "with the per-pixel mean
subtracted". ImageNet crops/flips run on the host (`imagenet.py`); here only normalisation,
the optional AlexNet PCA lighting (Krizhevsky et al. 2012 §4.1) and the 10-crop view.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import errors

# AlexNet PCA lighting on [0, 1] RGB, the eigen-decomposition used by fb.resnet.torch.
PCA_EIGVAL = np.asarray([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.asarray([[-0.5675, 0.7192, 0.4009],
                         [-0.5808, -0.0045, -0.8140],
                         [-0.5836, -0.6948, 0.4203]], np.float32)
PCA_STD = 0.1
# ImageNet per-channel statistics of [0, 1] RGB (fb.resnet.torch / torchvision).
IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32)


def normalize(images: jax.Array, mean: np.ndarray, std: np.ndarray) -> jax.Array:
  """uint8 -> float32 `(x / 255 - mean) / std`; `mean` is [H, W, C] (per pixel) or [C]."""
  return (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)


def random_crop_flip(images: jax.Array, rng: jax.Array, padding: int) -> jax.Array:
  """Zero-pads by `padding`, crops back to H×W at a random offset, flips half the images.

  One key per batch: the offsets and flips are drawn for the whole (global) batch,
  so they do not depend on how the batch is sharded.
  """
  b, h, w, _ = images.shape
  offset_rng, flip_rng = jax.random.split(rng)
  offsets = jax.random.randint(offset_rng, (b, 2), 0, 2 * padding + 1)
  flips = jax.random.bernoulli(flip_rng, 0.5, (b,))
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

  def crop_one(image, offset, flip):
    crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))
    return jnp.where(flip, crop[:, ::-1], crop)
  return jax.vmap(crop_one)(padded, offsets, flips)


def pca_lighting(images: jax.Array, rng: jax.Array, std: float = PCA_STD) -> jax.Array:
  """Adds `eigvec @ (alpha * eigval)`, alpha ~ N(0, std²) per image, to [0, 1] RGB images."""
  alpha = std * jax.random.normal(rng, (images.shape[0], 3), jnp.float32)
  shift = jnp.einsum("ij,bj->bi", jnp.asarray(PCA_EIGVEC), alpha * jnp.asarray(PCA_EIGVAL))
  return images + shift[:, None, None, :]


def cifar_preprocess(images: jax.Array, rng: Optional[jax.Array], train: bool, *, mean: np.ndarray,
                     std: np.ndarray, augment: bool, padding: int) -> jax.Array:
  """He et al. 2015 §4.2: normalise, then (train) pad-crop-flip; float32 [B, H, W, C].

  Normalising first makes the zero padding the mean pixel, as in the authors' and
  fb.resnet.torch's pipelines (pad-then-normalise would pad with -mean instead).
  """
  x = normalize(images, mean, std)
  if train and augment:
    if rng is None:
      raise errors.InputError("preprocess(train=True) needs an rng key for the random crop and flip")
    x = random_crop_flip(x, rng, padding)
  return x


GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as fb.resnet.torch's grayscale


def color_jitter(images: jax.Array, rng: jax.Array, strength: float) -> jax.Array:
  """fb.resnet.torch's `ColorJitter{brightness, contrast, saturation = strength}` on [0, 1] RGB.

  Per image, the three transforms run in a random order, each blending the image with a
  target by alpha ~ U(1 − strength, 1 + strength): brightness with black, contrast with
  the image's mean gray level, saturation with its grayscale version (Xie et al. 2017
  trained with strength 0.4). Values are not clipped, as in the reference.
  """
  b = images.shape[0]
  k_order, k_alpha = jax.random.split(rng)
  alphas = 1.0 + jax.random.uniform(k_alpha, (b, 3), jnp.float32, -strength, strength)
  orders = jax.vmap(lambda k: jax.random.permutation(k, 3))(jax.random.split(k_order, b))
  weights = jnp.asarray(GRAY_WEIGHTS, jnp.float32)

  def one(x, alpha, order):
    def brightness(y, a):
      return y * a
    def contrast(y, a):
      return y * a + (1.0 - a) * jnp.mean(y @ weights)
    def saturation(y, a):
      return y * a + (1.0 - a) * (y @ weights)[..., None]
    for i in range(3):
      x = jax.lax.switch(order[i], (brightness, contrast, saturation), x, alpha[order[i]])
    return x
  return jax.vmap(one)(images, alphas, orders)


def imagenet_preprocess(images: jax.Array, rng: Optional[jax.Array], train: bool, *,
                        mean: np.ndarray, std: np.ndarray, lighting: bool,
                        jitter: float = 0.0) -> jax.Array:
  """Host-cropped ImageNet batches: (train) color jitter and PCA lighting, then per-channel
  normalisation; the order of fb.resnet.torch (ColorJitter, Lighting, ColorNormalize)."""
  x = images.astype(jnp.float32) / 255.0
  if train and (lighting or jitter):
    if rng is None:
      raise errors.InputError("preprocess(train=True) with color_jitter or pca_lighting needs an rng key")
    k_light = rng
    if jitter:
      k_jitter, k_light = jax.random.split(rng)
      x = color_jitter(x, k_jitter, jitter)
    if lighting:
      x = pca_lighting(x, k_light)
  return (x - jnp.asarray(mean)) / jnp.asarray(std)


TEN_CROP_CENTER = 4  # index of the unflipped center view in `ten_crop`'s output


def ten_crop(images: jax.Array, crop_size: int) -> jax.Array:
  """The 10-crop view (Krizhevsky et al. 2012; He et al. 2015 Table 3): [10, B, crop, crop, C].

  Four corners and the center of each (eval_resize²) image, and their horizontal flips;
  the evaluator averages the softmax over the leading axis.
  """
  _, h, w, _ = images.shape
  if h < crop_size or w < crop_size:
    raise errors.InputError(f"ten_crop of {crop_size}² needs images at least that large, got {h}×{w}")
  top, left = (h - crop_size) // 2, (w - crop_size) // 2
  corners = [(0, 0), (0, w - crop_size), (h - crop_size, 0), (h - crop_size, w - crop_size), (top, left)]
  assert len(corners) - 1 == TEN_CROP_CENTER
  crops = [images[:, y:y + crop_size, x:x + crop_size] for y, x in corners]
  crops += [c[:, :, ::-1] for c in crops]
  return jnp.stack(crops)
