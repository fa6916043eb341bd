"""Layer responses (He et al. 2015, "Deep Residual Learning", §4.2, Fig. 7).

"The responses are the outputs of each 3×3 layer, after BN and before other nonlinearity
(ReLU/addition)": Fig. 7 plots their standard deviation over the test images, layer by layer
(top) and sorted by magnitude (bottom), for plain nets and ResNets of 20, 56 and 110 layers on
CIFAR-10. The paper finds the ResNets' responses generally smaller than their plain
counterparts', and smaller in deeper ResNets: the residual functions are closer to zero than
non-residual ones, and each layer of a deeper ResNet modifies the signal less.

`layer_responses` takes, for every 3×3 convolution of the network in the order it is called,
the output of the norm called next (its BN; for a network without normalisation, that norm is
the identity), and their standard deviation over all the images, positions and channels. In the
pre-activation orders the norm after a branch's last convolution follows the addition.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.analysis import probe
from resnet_jax.analysis.probe import Mode, Variables
from resnet_jax.errors import InputError

# The names the models give the modules their `norm` builds (stem_bn, bn1, bn_out, final_bn, ...).
NORM_NAMES = re.compile(r"(stem_)?bn\d*|bn_out|final_bn|projection_bn")


@dataclasses.dataclass(frozen=True)
class LayerResponses:
  """Per 3×3 layer, in the order the network applies them.

  Attributes:
    layers: the norms' paths ("stem_bn", "stage1_unit1/bn1", ...).
    std: the standard deviation of each layer's responses over the images, positions, channels.
    images: how many images.
    mode: how BatchNorm normalised.
  """
  layers: List[str]
  std: np.ndarray
  images: int
  mode: str

  @property
  def sorted_std(self) -> np.ndarray:
    """The stds in descending order (Fig. 7, bottom)."""
    return np.sort(self.std)[::-1]

  def to_dict(self) -> Dict[str, Any]:
    return {"layers": list(self.layers), "std": probe.json_numbers(self.std),
            "sorted_std": probe.json_numbers(self.sorted_std),
            "images": self.images, "mode": self.mode,
            "statistic": "std over images, positions and channels of each 3x3 layer's output after its norm"}


def _is_3x3_conv(module: nn.Module) -> bool:
  kernel = getattr(module, "kernel_size", None)
  return isinstance(module, nn.Conv) and tuple(kernel or ()) == (3, 3)


def _responses(model: nn.Module, variables: Variables, images: jax.Array, mode: Mode) -> Dict[str, jax.Array]:
  """Norm path -> its output, for the norm that follows each 3×3 convolution."""
  found: Dict[str, jax.Array] = {}
  pending: List[Optional[str]] = [None]

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__":
      return out
    if _is_3x3_conv(module):
      pending[0] = "/".join(module.path)
    elif pending[0] is not None and NORM_NAMES.fullmatch(module.name or ""):
      found["/".join(module.path)] = out
      pending[0] = None
    return out

  with nn.intercept_methods(record):
    probe.apply(model, variables, images, mode)
  return found


def _moments(y: jax.Array) -> tuple:
  """(count, mean, sum of squared deviations) of every element of `y` (two passes)."""
  y = y.astype(jnp.float32)
  mean = jnp.mean(y)
  return y.size, mean, jnp.sum(jnp.square(y - mean))


def _combine(a: tuple, b: tuple) -> tuple:
  """The moments of two chunks together (Chan et al.'s pairwise update)."""
  (na, ma, sa), (nb, mb, sb) = a, b
  n = na + nb
  delta = mb - ma
  return n, ma + delta * nb / n, sa + sb + delta ** 2 * na * nb / n


@probe.program_cache()
def _program(model: nn.Module, mode: Mode):
  """(the layers, filled in the network's order when first traced; the jitted moments of each)."""
  layers: List[str] = []

  def run(v, x):
    found = _responses(model, v, x, mode)
    layers[:] = list(found)
    return [_moments(found[k]) for k in layers]
  return layers, jax.jit(run)


def layer_responses(model: nn.Module, variables: Variables, images: jax.Array, mode: Mode,
                    batch_size: int = 250) -> LayerResponses:
  """The std of every 3×3 layer's responses over `images` (module docstring), in batches of
  `batch_size` in evaluation mode (training mode normalises `images` as one batch)."""
  model = probe.without_stochastic_depth(model)
  layers, run = _program(model, mode)
  chunks = [images] if mode.train else [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
  moments: List[tuple] = []
  for chunk in chunks:
    parts = [(float(n), float(mean), float(m2)) for n, mean, m2 in run(variables, chunk)]
    moments = [_combine(a, b) for a, b in zip(moments, parts)] if moments else parts
  if not layers:
    raise InputError(f"{type(model).__name__} has no 3×3 convolution followed by a norm to analyse")
  std = np.array([np.sqrt(m2 / n) for n, _, m2 in moments])
  return LayerResponses(list(layers), std, int(images.shape[0]), mode.describe())
