"""The PyTorch peer the CPU benchmark compares our train step with (`--compare-torch`).

The network of `minimal.like(model)` (same stage table, widths, block type, stem and
shortcut, so the same multiply-adds) in PyTorch eager mode, as a PyTorch user would
train it on a CPU: channels_last tensors (PyTorch's oneDNN convolutions are fastest
in that layout), `torch.set_num_threads(cores)`, `nn.BatchNorm2d` over the whole batch
(momentum 0.1 in PyTorch's convention = our 0.9), SGD with momentum and coupled L2
weight decay, cross-entropy. Each step normalises the uint8 batch, as ours does.

Torch is an optional dependency (the `[reference]` extra): this module imports it only
inside `candidate`, so importing the bench never needs it.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Tuple

import numpy as np

from resnet_jax import errors
from resnet_jax.bench import minimal


def available() -> Optional[str]:
  """None when torch can be imported, else why not (one line)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import  # heavy optional dependency
  except ImportError as e:
    return f"torch is not installed ({e}); pip install 'resnetax[reference]'"
  return None


def cores() -> int:
  """The CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _network(net: minimal.ResNet):
  """`net` as a `torch.nn.Module` (the same layers in the same order)."""
  import torch  # pylint: disable=g-import-not-at-top  # heavy optional dependency
  from torch import nn  # pylint: disable=g-import-not-at-top

  def conv(cin, cout, k, s=1, g=1):
    return nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False)

  class Block(nn.Module):
    def __init__(self, cin, features, inner, strides):
      super().__init__()
      if inner is None:
        self.body = nn.Sequential(conv(cin, features, 3, strides), nn.BatchNorm2d(features),
                                  nn.ReLU(inplace=True), conv(features, features, 3),
                                  nn.BatchNorm2d(features))
      else:
        self.body = nn.Sequential(conv(cin, inner, 1), nn.BatchNorm2d(inner), nn.ReLU(inplace=True),
                                  conv(inner, inner, 3, strides, net.cardinality), nn.BatchNorm2d(inner),
                                  nn.ReLU(inplace=True), conv(inner, features, 1), nn.BatchNorm2d(features))
      self.strides, self.pad = strides, features - cin
      self.projection = None
      if (cin != features or strides != 1) and not net.zero_pad_shortcut:
        self.projection = nn.Sequential(conv(cin, features, 1, strides), nn.BatchNorm2d(features))

    def forward(self, x):
      y = self.body(x)
      if self.projection is not None:
        x = self.projection(x)
      elif self.pad or self.strides != 1:  # option A: subsample, zero channels
        x = nn.functional.pad(x[:, :, ::self.strides, ::self.strides], (0, 0, 0, 0, 0, self.pad))
      return torch.relu_(x + y)

  k, s = (3, 1) if net.stem == "cifar" else (7, 2)
  layers = [conv(3, net.stem_width, k, s), nn.BatchNorm2d(net.stem_width), nn.ReLU(inplace=True)]
  if net.stem != "cifar":
    layers.append(nn.MaxPool2d(3, 2, 1))
  cin = net.stem_width
  for units, features, inner, strides in net.stages:
    for unit in range(units):
      layers.append(Block(cin, features, inner, strides if unit == 0 else 1))
      cin = features
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, net.num_classes)]
  return nn.Sequential(*layers)


def count_params(module) -> int:
  return int(sum(p.numel() for p in module.parameters()))


def candidate(net: minimal.ResNet, images: np.ndarray, labels: np.ndarray, learning_rate: float,
              weight_decay: float, nesterov: bool = False, seed: int = 0) -> Tuple[Callable[[int], None], Any]:
  """(`window(steps)` running `steps` PyTorch train steps on the batch, the torch module).

  `images`: uint8 NHWC, `labels`: int. float32 only (the comparison of issue 27).
  """
  import torch  # pylint: disable=g-import-not-at-top  # heavy optional dependency
  if np.dtype(net.dtype) != np.float32:
    raise errors.InputError(f"--compare-torch times float32 networks, not {np.dtype(net.dtype).name}")
  torch.set_num_threads(cores())
  torch.manual_seed(seed)
  module = _network(net).to(memory_format=torch.channels_last).train()
  optimizer = torch.optim.SGD(module.parameters(), lr=learning_rate, momentum=0.9,
                              weight_decay=weight_decay, nesterov=nesterov)
  # NHWC bytes viewed as NCHW: a channels_last tensor without a copy.
  x = torch.from_numpy(np.array(images, np.uint8)).permute(0, 3, 1, 2)
  y = torch.from_numpy(np.asarray(labels, np.int64))
  loss_fn = torch.nn.CrossEntropyLoss()

  def window(steps: int) -> None:
    for _ in range(steps):
      loss = loss_fn(module(x.float() / 255.0 - 0.5), y)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
    float(loss.detach())  # eager, but wait for the last step as the JAX candidates do
  return window, module
