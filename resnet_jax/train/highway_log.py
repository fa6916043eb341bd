"""The gradient highway logged while training (`config.gradient_highway_every_steps`, 0: off).

Every N steps, for every run of the group, `rj.analysis.highway` measures ‖∂L/∂x_l‖ of every
residual unit relative to the last one, and the share of it that arrives through the shortcut
(He et al. 2016, §3, Eq. 5), on one fixed batch: the first `global_batch_size` images of the eval
split, with the run's current weights and training-mode BatchNorm (the statistics the train step
normalises with; nothing is updated). The scalars go to the run's records as kind
"gradient_highway" (metrics.jsonl, and TensorBoard as gradient_highway/relative_norm/<unit> and
gradient_highway/shortcut_share/<unit>).

Its program is compiled apart from the train step, once per run, at the first step it is due;
off, nothing here runs and the train step is the same program.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.analysis import highway, probe
from resnet_jax.train.group import Group, Run


def fixed_batch(run: Run) -> Tuple[jax.Array, jax.Array]:
  """The first `global_batch_size` images of the run's eval split (at most all of them), preprocessed."""
  pipe = run.exp.pipeline
  count = min(int(run.exp.config.global_batch_size), int(pipe.num_eval_examples))
  pairs = [pipe.dataset.load_eval(i) for i in range(count)]
  images = pipe.preprocess(jnp.asarray(np.stack([np.asarray(x) for x, _ in pairs])), None, False)
  return images, jnp.asarray(np.array([int(y) for _, y in pairs], np.int32))


class GradientHighwayLog:
  """Measures and records the gradient highway of a group's runs when it is due (module docstring)."""

  def __init__(self, every: int):
    self.every = int(every)
    self._compiled: Dict[Run, Tuple[Callable, Any, list]] = {}

  def _program(self, run: Run, variables: Dict[str, Any]) -> Tuple[Callable, Any, list]:
    if run not in self._compiled:
      images, labels = fixed_batch(run)
      mode = probe.Mode(train=True)
      model = probe.without_stochastic_depth(run.exp.model)
      units, unit_inputs, shortcut_inputs = probe.unit_shapes(model, variables, images, mode)
      fn = jax.jit(highway.highway_fn(model, mode, units, unit_inputs, shortcut_inputs))
      self._compiled[run] = (fn, (images, labels), units)
    return self._compiled[run]

  def __call__(self, group: Group) -> None:
    """Records every run's gradient highway at the group's step."""
    for i, run in enumerate(group.runs):
      state = group.of_run(i).state
      variables = {"params": state.params, "batch_stats": state.batch_stats}
      fn, (images, labels), units = self._program(run, variables)
      out = jax.device_get(fn(variables, images, labels))
      norm = np.asarray(out["norm"], np.float64)
      scalars = {}
      for u, unit in enumerate(units):
        scalars[f"relative_norm/{unit}"] = norm[u] / norm[-1] if norm[-1] > 0 else float("nan")
        scalars[f"shortcut_share/{unit}"] = float(out["shortcut_share"][u])
      scalars["spread_max_over_min"] = float(norm.max() / norm.min()) if norm.min() > 0 else float("nan")
      run.session.writer.write(group.step, scalars, "gradient_highway")
