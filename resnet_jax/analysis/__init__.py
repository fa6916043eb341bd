"""The papers' analyses of signal and gradient inside residual networks (`rj.analysis`).

* `layer_responses` (He et al. 2015, Fig. 7): the std of each 3×3 layer's responses.
* `gradient_highway` (He et al. 2016, §3, Eq. 5): ‖∂L/∂x_l‖ per unit, and through shortcut vs branch.
* `gradient_correlations` (Balduzzi et al. 2017): how input gradients at nearby inputs correlate.

Each takes a network, its variables and a batch of preprocessed images, and a `Mode` (training-
mode BatchNorm at initialisation, evaluation mode for trained weights). `subject_from_config` / `subjects_from_workdir` give a config's
network at initialisation or a workdir's checkpoints with real images, and `analyze` writes
every number as JSON and the figures (`resnet-jax analyze`; `resnet_jax.analysis.figures`).

Submodules load on first use (the training loop imports `highway` alone; figures need matplotlib).
"""
import importlib
from typing import Any

_LAZY = {"Mode": "probe", "gradient_highway": "highway", "GradientHighway": "highway",
         "gradient_correlations": "shattered", "ShatteredGradients": "shattered",
         "layer_responses": "responses", "LayerResponses": "responses",
         "Subject": "run", "subject_from_config": "run", "subjects_from_workdir": "run", "analyze": "run",
         "figures": None, "run": None}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
  if name not in _LAZY:
    raise AttributeError(f"module 'resnet_jax.analysis' has no attribute {name!r}")
  module = importlib.import_module(f"resnet_jax.analysis.{_LAZY[name] or name}")
  return module if _LAZY[name] is None else getattr(module, name)
