"""RandAugment (Cubuk et al. 2020) and TrivialAugment (Müller & Hutter 2021) on the device.

The operations, their magnitudes and their arithmetic are torchvision's (`transforms.RandAugment`,
`transforms.TrivialAugmentWide` and the tensor functional ops they call, on uint8 images):
images are float32 arrays holding grey levels 0..255, and every operation ends as
torchvision's does on uint8 (clamped, then truncated), so a policy's output has whole grey
levels and each operation equals torchvision's up to float rounding
(`tests/test_auto_augment.py`). Geometric operations sample the nearest pixel
(torchvision's default) and fill with 0.

Per image, the draws depend on (key, example index) only (`augment.example_keys`):
RandAugment applies `num_ops` operations drawn uniformly from the 14, each at the fixed
magnitude bin `magnitude` of 31 (with `magnitude_std` > 0, timm's "mstd": the bin is drawn
from N(magnitude, std) clipped to [0, 30]) and a random sign for the signed ones;
TrivialAugment applies one operation at a uniform bin. Under `vmap` every operation is
computed for every image and one kept (`lax.switch` becomes a select): the cost `bench
--breakdown` reports.
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Tuple

import dm_pix
import jax
import jax.numpy as jnp

from resnet_jax.data.augment import example_keys

NUM_BINS = 31
MAX_LEVEL = 255.0


def _as_uint8(x: jax.Array) -> jax.Array:
  """torchvision's float -> uint8 cast of a clamped result: truncation."""
  return jnp.floor(jnp.clip(x, 0.0, MAX_LEVEL))


def _blend(image: jax.Array, degenerate: jax.Array, factor) -> jax.Array:
  """torchvision's `_blend`: factor·image + (1 − factor)·degenerate, clamped and truncated."""
  return _as_uint8(factor * image + (1.0 - factor) * degenerate)


def _grayscale(image: jax.Array) -> jax.Array:
  """`rgb_to_grayscale` of a uint8 image (ITU-R 601-2 weights, dm-pix's = torchvision's), truncated."""
  return jnp.floor(dm_pix.rgb_to_grayscale(image, keep_dims=True))


# The images torchvision's enhancement ops blend with ("degenerate" images, as PIL calls them).
def _black(image: jax.Array) -> jax.Array:
  return jnp.zeros_like(image)


def _mean_grey(image: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.mean(_grayscale(image)), image.shape)


def _grey(image: jax.Array) -> jax.Array:
  return jnp.broadcast_to(_grayscale(image), image.shape)


def _smoothed(image: jax.Array) -> jax.Array:
  """Smoothed by [[1,1,1],[1,5,1],[1,1,1]]/13 and rounded; the border pixels unchanged."""
  kernel = jnp.ones((3, 3), jnp.float32).at[1, 1].set(5.0) / 13.0
  height, width = image.shape[0], image.shape[1]
  windows = [image[dy:dy + height - 2, dx:dx + width - 2] * kernel[dy, dx] for dy in range(3) for dx in range(3)]
  return image.at[1:-1, 1:-1].set(jnp.round(sum(windows[1:], windows[0])))


def brightness(image: jax.Array, factor) -> jax.Array:
  return _blend(image, _black(image), factor)


def color(image: jax.Array, factor) -> jax.Array:
  """torchvision's `adjust_saturation`: blend with the grayscale image."""
  return _blend(image, _grey(image), factor)


def contrast(image: jax.Array, factor) -> jax.Array:
  """torchvision's `adjust_contrast`: blend with the mean grey level."""
  return _blend(image, _mean_grey(image), factor)


def sharpness(image: jax.Array, factor) -> jax.Array:
  """torchvision's `adjust_sharpness`: blend with the smoothed image."""
  return _blend(image, _smoothed(image), factor)


def posterize(image: jax.Array, bits) -> jax.Array:
  """Keeps the `bits` high bits of each grey level (torchvision: `image & -(2**(8 - bits))`)."""
  step = 2.0 ** (8 - bits)
  return jnp.floor(image / step) * step


def solarize(image: jax.Array, threshold) -> jax.Array:
  return jnp.where(image >= threshold, MAX_LEVEL - image, image)


def autocontrast(image: jax.Array, _=None) -> jax.Array:
  """Each channel stretched to 0..255 (a constant channel unchanged)."""
  low = jnp.min(image, axis=(0, 1), keepdims=True)
  high = jnp.max(image, axis=(0, 1), keepdims=True)
  flat = high == low
  scale = jnp.where(flat, 1.0, MAX_LEVEL / jnp.where(flat, 1.0, high - low))
  return _as_uint8((image - jnp.where(flat, 0.0, low)) * scale)


def _equalize_channel(channel: jax.Array) -> jax.Array:
  """torchvision's `_scale_channel`: the histogram's cumulative look-up table, shifted by one bin."""
  levels = channel.astype(jnp.int32)
  hist = jnp.zeros((256,), jnp.int32).at[levels.reshape(-1)].add(1)
  step = (levels.size - hist[jnp.max(levels)]) // 255       # all pixels but the top grey level's
  lut = (jnp.cumsum(hist) + step // 2) // jnp.maximum(step, 1)
  lut = jnp.clip(jnp.concatenate([jnp.zeros((1,), jnp.int32), lut[:-1]]), 0, 255)
  return jnp.where(step == 0, channel, lut[levels].astype(channel.dtype))


def equalize(image: jax.Array, _=None) -> jax.Array:
  return jnp.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def _inverse_affine(center: Tuple[float, float], angle, translate, shear) -> Tuple[jax.Array, ...]:
  """torchvision's `_get_inverse_affine_matrix` (scale 1; angles in degrees): the 2×3 matrix
  taking output to input coordinates, both relative to the image centre."""
  rot, sx, sy = (jnp.deg2rad(jnp.asarray(a, jnp.float32)) for a in (angle, shear[0], shear[1]))
  a = jnp.cos(rot - sy) / jnp.cos(sy)
  b = -jnp.cos(rot - sy) * jnp.tan(sx) / jnp.cos(sy) - jnp.sin(rot)
  c = jnp.sin(rot - sy) / jnp.cos(sy)
  d = -jnp.sin(rot - sy) * jnp.tan(sx) / jnp.cos(sy) + jnp.cos(rot)
  (cx, cy), (tx, ty) = center, translate
  m = [d, -b, 0.0, -c, a, 0.0]
  m[2] = m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
  m[5] = m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
  return tuple(m)


def _warp(image: jax.Array, matrix: Tuple[jax.Array, ...]) -> jax.Array:
  """torchvision's tensor `affine`: `grid_sample(nearest, zeros, align_corners=False)` over the
  grid of `_gen_affine_grid`, in the same float32 arithmetic (nearest: round half to even)."""
  height, width = image.shape[0], image.shape[1]
  x = jnp.arange(width, dtype=jnp.float32) - width * 0.5 + 0.5
  y = (jnp.arange(height, dtype=jnp.float32) - height * 0.5 + 0.5)[:, None]
  gx = x * (matrix[0] / (0.5 * width)) + y * (matrix[1] / (0.5 * width)) + matrix[2] / (0.5 * width)
  gy = x * (matrix[3] / (0.5 * height)) + y * (matrix[4] / (0.5 * height)) + matrix[5] / (0.5 * height)
  ix = jnp.round(((gx + 1.0) * width - 1.0) / 2.0).astype(jnp.int32)
  iy = jnp.round(((gy + 1.0) * height - 1.0) / 2.0).astype(jnp.int32)
  inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
  sampled = image[jnp.clip(iy, 0, height - 1), jnp.clip(ix, 0, width - 1)]
  return jnp.where(inside[..., None], sampled, 0.0)


def _corner(size: Tuple[int, int]) -> Tuple[float, float]:
  """torchvision's `center=[0, 0]` (the shears' origin), relative to the image centre."""
  return (-0.5 * size[1], -0.5 * size[0])


# The inverse matrices of the geometric operations, of the image size (H, W) and the magnitude.
def _shear_x_matrix(size, magnitude):
  return _inverse_affine(_corner(size), 0.0, (0.0, 0.0), (jnp.rad2deg(jnp.arctan(magnitude)), 0.0))


def _shear_y_matrix(size, magnitude):
  return _inverse_affine(_corner(size), 0.0, (0.0, 0.0), (0.0, jnp.rad2deg(jnp.arctan(magnitude))))


def _translate_x_matrix(size, pixels):
  """By `int(pixels)` (truncated towards zero, as torchvision's `_apply_op`)."""
  return _inverse_affine((0.0, 0.0), 0.0, (jnp.trunc(pixels), 0.0), (0.0, 0.0))


def _translate_y_matrix(size, pixels):
  return _inverse_affine((0.0, 0.0), 0.0, (0.0, jnp.trunc(pixels)), (0.0, 0.0))


def _rotate_matrix(size, degrees):
  """Counter-clockwise about the centre (torchvision's `rotate` passes −angle to the matrix)."""
  return _inverse_affine((0.0, 0.0), -degrees, (0.0, 0.0), (0.0, 0.0))


def shear_x(image: jax.Array, magnitude) -> jax.Array:
  return _warp(image, _shear_x_matrix(image.shape[:2], magnitude))


def shear_y(image: jax.Array, magnitude) -> jax.Array:
  return _warp(image, _shear_y_matrix(image.shape[:2], magnitude))


def translate_x(image: jax.Array, pixels) -> jax.Array:
  return _warp(image, _translate_x_matrix(image.shape[:2], pixels))


def translate_y(image: jax.Array, pixels) -> jax.Array:
  return _warp(image, _translate_y_matrix(image.shape[:2], pixels))


def rotate(image: jax.Array, degrees) -> jax.Array:
  return _warp(image, _rotate_matrix(image.shape[:2], degrees))


def identity(image: jax.Array, _=None) -> jax.Array:
  return image


class Op(NamedTuple):
  """One operation of a policy: how it transforms (`kind` and `fn`), and its magnitude at a bin.

  kind "warp": `fn(size, magnitude)` is the inverse affine matrix of a geometric operation;
  "blend": `fn(image)` is the image blended with by the factor 1 + magnitude; "pointwise":
  `fn(image, magnitude)` is the result. `apply_op` computes one warp and one blend per image
  whichever operation is drawn, not all 14 operations.
  """
  kind: str
  fn: Callable
  value: Callable[[jax.Array, Tuple[int, int]], jax.Array]   # (bin in [0, 30], (H, W)) -> magnitude
  signed: bool


def _linear(top: float) -> Callable:
  return lambda level, size: top * level / (NUM_BINS - 1)   # torch.linspace(0, top, 31)[level]


def _posterize_bits(levels: float) -> Callable:
  """8 − round(bin / (30 / levels)): 8..4 bits (RandAugment), 8..2 (TrivialAugment Wide)."""
  return lambda level, size: 8 - jnp.round(level / ((NUM_BINS - 1) / levels))


def _solarize_threshold(level, size):
  return MAX_LEVEL * (1.0 - level / (NUM_BINS - 1))             # linspace(255, 0, 31)


def _none(level, size):
  del level, size
  return jnp.zeros(())


def _policy_ops(shear: float, translate: Callable, rotation: float, enhance: float, posterize_levels: float
                ) -> Dict[str, Op]:
  """torchvision's `_augmentation_space`, in its order."""
  return {
      "Identity": Op("pointwise", identity, _none, False),
      "ShearX": Op("warp", _shear_x_matrix, _linear(shear), True),
      "ShearY": Op("warp", _shear_y_matrix, _linear(shear), True),
      "TranslateX": Op("warp", _translate_x_matrix, lambda level, size: translate(size[1]) * level / (NUM_BINS - 1),
                       True),
      "TranslateY": Op("warp", _translate_y_matrix, lambda level, size: translate(size[0]) * level / (NUM_BINS - 1),
                       True),
      "Rotate": Op("warp", _rotate_matrix, _linear(rotation), True),
      "Brightness": Op("blend", _black, _linear(enhance), True),
      "Color": Op("blend", _grey, _linear(enhance), True),
      "Contrast": Op("blend", _mean_grey, _linear(enhance), True),
      "Sharpness": Op("blend", _smoothed, _linear(enhance), True),
      "Posterize": Op("pointwise", posterize, _posterize_bits(posterize_levels), False),
      "Solarize": Op("pointwise", solarize, _solarize_threshold, False),
      "AutoContrast": Op("pointwise", autocontrast, _none, False),
      "Equalize": Op("pointwise", equalize, _none, False),
  }


# RandAugment: translations up to 150/331 of the side (torchvision, from AutoAugment's 150 px of 331).
RAND_AUGMENT = _policy_ops(0.3, lambda side: 150.0 / 331.0 * side, 30.0, 0.9, 4.0)
# TrivialAugment Wide: wider ranges, translations up to 32 px whatever the size.
TRIVIAL_AUGMENT = _policy_ops(0.99, lambda side: 32.0, 135.0, 0.99, 6.0)


_IDENTITY_MATRIX = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def apply_op(ops: Dict[str, Op], image: jax.Array, index: jax.Array, level: jax.Array, negate: jax.Array
             ) -> jax.Array:
  """Operation `index` of `ops` at magnitude bin `level` (negated when `negate` and signed).

  Under `vmap` every candidate is computed for every image: one warp with the drawn operation's
  matrix, one blend with its degenerate image and factor, and the pointwise operations; then
  the drawn one is kept.
  """
  size = image.shape[:2]
  names = list(ops)

  def magnitude(op: Op) -> jax.Array:
    value = jnp.asarray(op.value(level, size), jnp.float32)
    return jnp.where(negate, -value, value) if op.signed else value
  value = jnp.stack([magnitude(op) for op in ops.values()])[index]
  matrices = jnp.stack([jnp.stack([jnp.asarray(m, jnp.float32) for m in (
      op.fn(size, value) if op.kind == "warp" else _IDENTITY_MATRIX)]) for op in ops.values()])
  blends = [op for op in ops.values() if op.kind == "blend"]
  degenerates = jnp.stack([op.fn(image) for op in blends])
  blend_of = jnp.asarray([blends.index(op) if op.kind == "blend" else 0 for op in ops.values()])
  candidates = [_warp(image, tuple(matrices[index])), _blend(image, degenerates[blend_of[index]], 1.0 + value)]
  candidates += [op.fn(image, value) for op in ops.values() if op.kind == "pointwise"]
  pointwise = [n for n in names if ops[n].kind == "pointwise"]
  candidate_of = jnp.asarray([0 if ops[n].kind == "warp" else 1 if ops[n].kind == "blend" else 2 + pointwise.index(n)
                              for n in names])
  return jnp.stack(candidates)[candidate_of[index]]


def rand_augment(images: jax.Array, rng: jax.Array, num_ops: int, magnitude: float, magnitude_std=0.0
                 ) -> jax.Array:
  """RandAugment (Cubuk et al. 2020) as torchvision's `RandAugment(num_ops, magnitude)` on 31 bins,
  with timm's optional Gaussian magnitude noise; float32 grey levels [B, H, W, C] out."""
  def one(key: jax.Array, image: jax.Array) -> jax.Array:
    for k in jax.random.split(key, num_ops):
      k_op, k_sign, k_level = jax.random.split(k, 3)
      level = jnp.clip(magnitude + magnitude_std * jax.random.normal(k_level), 0.0, NUM_BINS - 1)
      image = apply_op(RAND_AUGMENT, image, jax.random.randint(k_op, (), 0, len(RAND_AUGMENT)), level,
                       jax.random.bernoulli(k_sign))
    return image
  images = images.astype(jnp.float32)
  return jax.vmap(one)(example_keys(rng, images.shape[0]), images)


def trivial_augment(images: jax.Array, rng: jax.Array) -> jax.Array:
  """TrivialAugment (Müller & Hutter 2021) as torchvision's `TrivialAugmentWide()`: one operation
  at a uniformly drawn bin of 31."""
  def one(key: jax.Array, image: jax.Array) -> jax.Array:
    k_op, k_sign, k_level = jax.random.split(key, 3)
    level = jax.random.randint(k_level, (), 0, NUM_BINS).astype(jnp.float32)
    return apply_op(TRIVIAL_AUGMENT, image, jax.random.randint(k_op, (), 0, len(TRIVIAL_AUGMENT)), level,
                    jax.random.bernoulli(k_sign))
  images = images.astype(jnp.float32)
  return jax.vmap(one)(example_keys(rng, images.shape[0]), images)


POLICIES = {"randaugment": rand_augment, "trivialaugment": trivial_augment}
