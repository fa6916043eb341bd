"""On-device preprocessing: pure, jittable functions of uint8 batches (called inside the train step).

CIFAR (He et al. 2015 §4.2): "4 pixels are padded on each side, and a 32×32 crop is randomly
sampled from the padded image or its horizontal flip", inputs "with the per-pixel mean
subtracted". ImageNet crops/flips run on the host (`imagenet.py`); here only normalisation,
the optional AlexNet PCA lighting (Krizhevsky et al. 2012 §4.1) and the 10-crop view.

Batch augmentations of the modern recipes (off unless a config turns them on), each a
function of the batch and one key, its draws a function of (key, example index) only:
random erasing (Zhong et al. 2020) and mixup / CutMix (Zhang et al. 2018; Yun et al. 2019),
as timm's `RandomErasing` and `Mixup` do them. RandAugment and TrivialAugment are in
`auto_augment.py`.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

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


def example_keys(rng: jax.Array, batch: int) -> jax.Array:
  """One key per example: `fold_in(rng, i)` for row i of the global batch, so an example's
  draws depend on (seed, step, row) only, not on the batch's sharding."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch))


# Random erasing (Zhong et al. 2020) with timm's defaults: area in [2 %, 1/3] of the image,
# aspect ratio log-uniform in [0.3, 1/0.3], up to 10 attempts, per-pixel N(0, 1) noise.
ERASE_AREA = (0.02, 1.0 / 3.0)
ERASE_MIN_ASPECT = 0.3
ERASE_ATTEMPTS = 10


def _erasing_box(rng: jax.Array, height: int, width: int) -> Tuple[jax.Array, ...]:
  """(found, top, left, h, w): timm's first of 10 attempts whose box fits inside the image."""
  k_area, k_aspect, k_top, k_left = jax.random.split(rng, 4)
  area = jax.random.uniform(k_area, (ERASE_ATTEMPTS,), jnp.float32, *ERASE_AREA) * height * width
  log_ratio = jax.random.uniform(k_aspect, (ERASE_ATTEMPTS,), jnp.float32, math.log(ERASE_MIN_ASPECT),
                                 -math.log(ERASE_MIN_ASPECT))
  ratio = jnp.exp(log_ratio)
  hs = jnp.round(jnp.sqrt(area * ratio)).astype(jnp.int32)   # Python's round: half to even
  ws = jnp.round(jnp.sqrt(area / ratio)).astype(jnp.int32)
  fits = (hs < height) & (ws < width)
  first = jnp.argmax(fits)
  h, w = hs[first], ws[first]
  top = jax.random.randint(k_top, (), 0, height - h + 1)      # random.randint: both ends included
  left = jax.random.randint(k_left, (), 0, width - w + 1)
  return jnp.any(fits), top, left, h, w


def random_erasing(images: jax.Array, rng: jax.Array, probability) -> jax.Array:
  """timm's `RandomErasing(probability, mode="pixel")` on normalised images [B, H, W, C]: with
  `probability`, one box of each image becomes N(0, 1) noise."""
  b, height, width, _ = images.shape

  def one(key: jax.Array, image: jax.Array) -> jax.Array:
    k_apply, k_box, k_noise = jax.random.split(key, 3)
    found, top, left, h, w = _erasing_box(k_box, height, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    erase = found & (jax.random.uniform(k_apply) < probability) & inside
    noise = jax.random.normal(k_noise, image.shape, image.dtype)
    return jnp.where(erase[..., None], noise, image)
  return jax.vmap(one)(example_keys(rng, b), images)


def smoothed_one_hot(labels: jax.Array, num_classes: int, smoothing) -> jax.Array:
  """timm's `one_hot(on = 1 − s + s/C, off = s/C)`: label smoothing (Szegedy et al. 2016)."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> Tuple[jax.Array, ...]:
  """timm's `rand_bbox`: a box of sides ⌊H√(1−λ)⌋ × ⌊W√(1−λ)⌋ centred on a uniform pixel, clipped
  to the image: (top, bottom, left, right), bottom and right exclusive."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  k_y, k_x = jax.random.split(rng)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  return (jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height),
          jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width))


def cutmix(images: jax.Array, box: Tuple[jax.Array, ...]) -> Tuple[jax.Array, jax.Array]:
  """CutMix (Yun et al. 2019): the box of each image replaced by that of the batch reversed;
  also the label weight λ = 1 − pasted area / image area (timm's `correct_lam`)."""
  _, height, width, _ = images.shape
  top, bottom, left, right = box
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  mixed = jnp.where(inside[None, :, :, None], images[::-1], images)
  return mixed, 1.0 - ((bottom - top) * (right - left)).astype(jnp.float32) / (height * width)


def mix_targets(targets: jax.Array, lam: jax.Array) -> jax.Array:
  """timm's `mixup_target`: λ·y + (1 − λ)·y reversed, for probability targets [B, C]."""
  return targets * lam + targets[::-1] * (1.0 - lam)


def mixup(images: jax.Array, lam: jax.Array) -> jax.Array:
  """mixup (Zhang et al. 2018): λ·x + (1 − λ)·x reversed, as timm's batch mode."""
  return images * lam + images[::-1] * (1.0 - lam)


def mix_batch(images: jax.Array, targets: jax.Array, rng: jax.Array, *, mixup_alpha, cutmix_alpha, mix_prob,
              switch_prob, use_mixup: bool, use_cutmix: bool) -> Tuple[jax.Array, jax.Array]:
  """timm's `Mixup` in "batch" mode: with probability `mix_prob` the batch is mixed with itself
  reversed, by CutMix with probability `switch_prob` when both are on (else the one that is),
  λ ~ Beta(α, α) of the one chosen; dense `targets` [B, C] are mixed with the same λ (CutMix's
  corrected to the pasted area).

  `use_mixup` / `use_cutmix` decide what is traced; the α and probabilities may be traced.
  """
  k_apply, k_switch, k_lam, k_box = jax.random.split(rng, 4)
  apply = jax.random.uniform(k_apply) < mix_prob
  if use_mixup and use_cutmix:
    use_box = jax.random.uniform(k_switch) < switch_prob
    alpha = jnp.where(use_box, cutmix_alpha, mixup_alpha)
  else:
    use_box, alpha = jnp.asarray(use_cutmix), (cutmix_alpha if use_cutmix else mixup_alpha)
  lam = jax.random.beta(k_lam, alpha, alpha).astype(jnp.float32)
  out = mixup(images, lam) if use_mixup else images
  if use_cutmix:
    boxed, lam_boxed = cutmix(images, cutmix_box(k_box, lam, images.shape[1], images.shape[2]))
    lam, out = jnp.where(use_box, lam_boxed, lam), jnp.where(use_box, boxed, out)
  lam = jnp.where(apply, lam, 1.0)
  return jnp.where(apply, out, images), mix_targets(targets, lam)
