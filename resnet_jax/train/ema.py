"""The exponential moving average of the weights (params and BatchNorm statistics), as timm's
`ModelEmaV3`: kept in `TrainState.ema` (None when `ema.decay` is 0, so the state and its
checkpoints are what they were without it), updated after each optimiser step, evaluated beside
the raw weights (`evaluation.py`), loadable with `load_network(..., weights="ema")`.

After update t (1-based, timm's `num_updates`) the decay is 0 for t = 1 (the EMA becomes the
weights) and then `decay`, or with `warmup` min(1 − (1 + (t − 1)/γ)^−p, decay)
(`ModelEmaV3.get_decay`, min_decay 0, update_after_step 0); the EMA moves towards the
weights by `torch.lerp`'s arithmetic.
"""
from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` keeps an EMA (a config from before the field keeps none)."""
  return bool(config.get("ema", {}).get("decay", 0.0))


def ranking(config: ml_collections.ConfigDict) -> str:
  """The eval metric that ranks a run's checkpoints for keep-best: the EMA's error with
  `ema.keep_best`, else the weights' (`storage.checkpoints.RANK_BY`)."""
  return "ema_error" if config.get("ema", {}).get("keep_best", False) else "error"


def initial(params: Any, batch_stats: Any) -> Dict[str, Any]:
  """The EMA at step 0: a copy of the weights (timm deep-copies the model)."""
  return {"params": params, "batch_stats": batch_stats}


def decay_at(step: jax.Array, decay, warmup, gamma, power) -> jax.Array:
  """The decay of the update that follows optimiser step `step` (0-based): timm's
  `get_decay(step + 1)`. `warmup` is a bool or 0/1 (a packed run's own value)."""
  t = jnp.asarray(step, jnp.float32)
  warm = jnp.minimum(1.0 - (1.0 + t / gamma) ** (-power), decay)
  d = jnp.where(jnp.asarray(warmup, bool), warm, jnp.asarray(decay, jnp.float32))
  return jnp.where(t <= 0, 0.0, jnp.maximum(d, 0.0))


def lerp(average: jax.Array, value: jax.Array, weight: jax.Array) -> jax.Array:
  """`torch.lerp(average, value, weight)` (exact at weight 1: the value)."""
  return jnp.where(weight < 0.5, average + weight * (value - average), value - (value - average) * (1.0 - weight))


def update(ema: Dict[str, Any], params: Any, batch_stats: Any, decay: jax.Array) -> Dict[str, Any]:
  """The EMA after one update with `decay`: every leaf moves by (1 − decay) towards the weights."""
  return jax.tree.map(lambda e, w: lerp(e, w, 1.0 - decay), ema, initial(params, batch_stats))
