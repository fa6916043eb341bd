"""Stochastic depth (Huang et al. 2016): drop whole residual branches while training.

In training each example skips a unit's residual branch with that unit's drop rate, so the
unit passes only its shortcut; a kept branch is divided by its survival probability, so
the expected output is the network's (timm's ``DropPath``; the paper instead scales the
branch by the survival probability at test time, the same function in expectation). At
evaluation every branch is kept and nothing is scaled: the network is the one without it.

The rate grows linearly with depth (the paper's "linear decay rule", Eq. 4: survival
p_l = 1 − l/L·(1 − p_L), l = 1..L), so ``drop_path_rate`` (timm's name) is the last unit's
drop rate 1 − p_L (the paper's choice: 0.5). ``drop_path_rule`` picks the indexing:

* ``"linear"``: unit l of L drops with rate · l/L (the paper).
* ``"timm"``: unit l drops with rate · (l − 1)/(L − 1), the first never (timm's
  ``linspace(0, rate, L)``), what timm's ``drop_path_rate`` gives its ResNets.
"""
from __future__ import annotations

from typing import List

import jax
import jax.numpy as jnp

DROP_PATH_RULES = ("linear", "timm")


def drop_rates(rate: float, num_units: int, rule: str = "linear") -> List[float]:
  """The drop rate of each of `num_units` residual units, first to last (see the module)."""
  if rule == "linear":
    return [rate * l / num_units for l in range(1, num_units + 1)]
  if num_units == 1:
    return [0.0]
  return [rate * i / (num_units - 1) for i in range(num_units)]


def drop_path(branch: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """`branch` zeroed for each example with probability `rate`, kept ones divided by 1 − rate."""
  keep = 1.0 - rate
  shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
  kept = jax.random.bernoulli(rng, keep, shape)
  return branch * (kept.astype(branch.dtype) / jnp.asarray(keep, branch.dtype))
