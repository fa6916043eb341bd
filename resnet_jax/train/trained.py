"""A trained network, ready for inference: the model, its weights and its input preprocessing.

`rj.train.load_network(WORKDIR)` (a training run) and `rj.interop.pretrained(NAME, FILE)`
(torchvision / timm weights) return one; `net(images)` gives the logits of uint8 NHWC images.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Iterator, Optional

import jax

from resnet_jax import models
from resnet_jax.data.preprocessing import Preprocessing


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedNetwork:
  """A network with its weights and the eval-time transform of its inputs.

  Attributes:
    model: the `ResNet` (`model.stride_on`, `model.shortcut`, ... say what it is).
    variables: `{"params", "batch_stats"}` for `model.apply(variables, x, train=False)`.
    preprocessing: uint8 images -> the network input, with its mean/std/sizes as data.
    name: the registry name of the network (`rj.models.create(name)` builds the same one).
    source: where the weights come from (a workdir's checkpoint, a file).
    step: the training step of the checkpoint, for a training run.

  `model, variables = net` unpacks as the functions returning it did before.
  """
  model: models.ResNet
  variables: Dict[str, Any]
  preprocessing: Preprocessing
  name: str
  source: str
  step: Optional[int] = None

  def __call__(self, images: jax.Array) -> jax.Array:
    """Logits of uint8 images [B, H, W, C] (preprocessed, then the network in eval mode; jitted)."""
    return self._logits(self.variables, images)

  @functools.cached_property
  def _logits(self):
    return jax.jit(lambda variables, images: self.model.apply(variables, self.preprocessing(images), train=False))

  def __iter__(self) -> Iterator[Any]:
    yield self.model
    yield self.variables

  def __repr__(self) -> str:
    step = f", step={self.step}" if self.step is not None else ""
    return f"TrainedNetwork(name={self.name!r}, source={self.source!r}{step})"
