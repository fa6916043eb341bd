"""The eval-time input transform of a trained network, as data that travels with its weights.

A network is only as good as the preprocessing it was trained with: CIFAR ResNets see
images with the train split's mean image subtracted (He et al. 2015 §4.2), so images
merely divided by 255 double the error. `Preprocessing` holds that transform as data
(mean, std, sizes, in the spirit of timm's `pretrained_cfg`) and applies it as one
jittable function of uint8 NHWC images. A training run records it in
`WORKDIR/preprocessing.json`; `rj.train.load_network` and `rj.interop.pretrained` hand it
back with the weights.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import errors
from resnet_jax.data import augment

INTERPOLATIONS = ("bilinear", "bicubic")


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessing:
  """uint8 images [B, H, W, C] -> the float32 network input, `(x / 255 - mean) / std`.

  Attributes:
    mean, std: on [0, 1] pixels; [C] per channel, or [H, W, C] per pixel (the CIFAR
      papers' mean image, std 1).
    input_size: (height, width) of the network input.
    resize_size: the shorter side is first resized to this (antialiased), then the center
      `input_size` is cropped: torchvision's `Resize(256)` + `CenterCrop(224)`. None: the
      images must come at `input_size`.
    interpolation: "bilinear" or "bicubic" (of the resize).
    description: where the statistics come from.
  """
  mean: np.ndarray
  std: np.ndarray
  input_size: Tuple[int, int]
  resize_size: Optional[int] = None
  interpolation: str = "bilinear"
  description: str = ""

  def __post_init__(self):
    mean = np.asarray(self.mean, np.float32)
    std = np.asarray(self.std, np.float32)
    size = tuple(int(s) for s in self.input_size)
    if len(size) != 2 or min(size) < 1:
      raise errors.InputError(f"input_size={self.input_size!r} must be (height, width)")
    if mean.ndim not in (1, 3) or (mean.ndim == 3 and mean.shape[:2] != size):
      raise errors.InputError(f"mean of shape {mean.shape} must be [C] or [{size[0]}, {size[1]}, C]")
    if std.ndim != 1 or std.shape[0] != mean.shape[-1] or np.any(std <= 0):
      raise errors.InputError(f"std {std.tolist()} must be {mean.shape[-1]} positive numbers (one per channel)")
    if self.interpolation not in INTERPOLATIONS:
      raise errors.InputError(f"interpolation={self.interpolation!r} is not one of {INTERPOLATIONS}")
    if self.resize_size is not None and int(self.resize_size) < min(size):
      raise errors.InputError(f"resize_size={self.resize_size} is smaller than input_size {size}")
    object.__setattr__(self, "mean", mean)
    object.__setattr__(self, "std", std)
    object.__setattr__(self, "input_size", size)

  @classmethod
  def imagenet(cls, input_size: int = 224, resize_size: int = 256, interpolation: str = "bilinear"
               ) -> "Preprocessing":
    """torchvision's ImageNet evaluation: shorter side 256, center 224, ImageNet mean/std."""
    return cls(augment.IMAGENET_MEAN, augment.IMAGENET_STD, (input_size, input_size), resize_size,
               interpolation, f"ImageNet mean/std; shorter side {resize_size}, center {input_size}² "
               f"({interpolation})")

  @property
  def channels(self) -> int:
    return int(self.mean.shape[-1])

  def __call__(self, images: jax.Array) -> jax.Array:
    """The network input of uint8 images [B, H, W, C]; jittable (the sizes are static)."""
    if images.ndim != 4 or images.shape[-1] != self.channels:
      raise errors.InputError(f"expected uint8 images [batch, height, width, {self.channels}] (NHWC), got shape "
                       f"{tuple(images.shape)}")
    if self.resize_size is not None:
      images = self._resize_center_crop(images)
    elif tuple(images.shape[1:3]) != self.input_size:
      raise errors.InputError(f"expected {self.input_size[0]}×{self.input_size[1]} images (this network's input), "
                       f"got {images.shape[1]}×{images.shape[2]}")
    return augment.normalize(images, self.mean, self.std)

  def _resize_center_crop(self, images: jax.Array) -> jax.Array:
    """torchvision's Resize(resize_size) then CenterCrop(input_size), back on the uint8 grid."""
    b, h, w, c = images.shape
    new_h, new_w = ((self.resize_size, int(self.resize_size * w / h)) if h <= w
                    else (int(self.resize_size * h / w), self.resize_size))
    if (new_h, new_w) != (h, w):
      resized = jax.image.resize(images.astype(jnp.float32), (b, new_h, new_w, c), self.interpolation,
                                 antialias=True)
      images = jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)
    crop_h, crop_w = self.input_size
    top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
    return images[:, top:top + crop_h, left:left + crop_w]

  # -- as data -----------------------------------------------------------------------
  def to_dict(self) -> Dict[str, Any]:
    return {"mean": _shortest(self.mean), "std": _shortest(self.std), "input_size": list(self.input_size),
            "resize_size": self.resize_size, "interpolation": self.interpolation,
            "description": self.description}

  @classmethod
  def from_dict(cls, data: Dict[str, Any]) -> "Preprocessing":
    return cls(np.asarray(data["mean"], np.float32), np.asarray(data["std"], np.float32),
               tuple(data["input_size"]), data.get("resize_size"), data.get("interpolation", "bilinear"),
               data.get("description", ""))


def _shortest(values: np.ndarray) -> list:
  """float32 values as nested lists of the shortest decimals that read back to the same float32."""
  return np.asarray([float(str(v)) for v in values.ravel()]).reshape(values.shape).tolist()
