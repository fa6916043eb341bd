"""Which runs can train together (packed training), and the one line that says why not.

A group of runs trains in lockstep (`group.py`). On an accelerator its runs share one jitted
program, their states stacked on a leading run axis (`step.build_packed_train_step`,
`over_runs`): every kernel does the work of R runs. On a CPU, which is compute-bound (R runs
packed cost what R runs alone cost), the group dispatches each run's own program in turn,
so a run's arithmetic is that of the run trained alone, whatever its group
(`stacks_runs`). Either way the runs need one network structure and one step structure,
so configs may differ only in

* `seed`: initial weights, augmentation and dropout randomness, data order;
* what is read only to initialise: `init_from`, `model.zero_init_residual`,
  `model.shortcut_options.gate_bias_init`;
* the optimiser's and the schedule's values (`optimizer.*`, `schedule.*`): each run keeps
  its own optimiser (`lax.switch` in the step) as long as the optimiser state has the
  same structure (the optimiser, momentum on or off, weight decay on or off, masked or not,
  its mode, Nesterov, gradient clipping on or off alike);
* the values of the recipes' parts (`PER_RUN_FIELDS`: the EMA's decay and warm-up, mixup /
  CutMix α and probabilities, the random-erasing probability; `parts.per_run` gives each run
  its own) as long as the same parts are on (`_structure`).

Everything else (the network, data, batch, BatchNorm mode, dtype, length, cadences) must be
equal. `groups` sorts any list of configs into groups that can be packed.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax.storage.workdir import flat_fields
from resnet_jax.train import config as config_lib

PER_RUN_FIELDS = frozenset({"seed", "init_from", "model.zero_init_residual",
                            "model.shortcut_options.gate_bias_init",
                            "ema.decay", "ema.warmup", "ema.warmup_gamma", "ema.warmup_power",
                            "augmentation.mixup_alpha", "augmentation.cutmix_alpha", "augmentation.mix_prob",
                            "augmentation.switch_prob", "augmentation.random_erasing"})
PER_RUN_PREFIXES = ("optimizer.", "schedule.")


STEP_PARTS = ("EMA", "mixup", "CutMix", "random erasing")


def _structure(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """What decides the structure of the optimiser state and of the step's parts (must be equal
  in a packed group; the values behind them may differ)."""
  o, a = config.optimizer, config.get("augmentation", {})
  return {"optimizer.name": o.get("name", "sgd"), "momentum": bool(o.momentum),
          "weight_decay": bool(o.weight_decay), "weight_decay_mode": o.weight_decay_mode,
          "nesterov": bool(o.nesterov), "weight_decay_mask": bool(o.weight_decay_exclude),
          "gradient clipping": bool(o.get("clip_grad_norm", 0.0)),
          "scaled_learning_rates": bool(o.get("scaled_learning_rate_params", "")),
          "EMA": bool(config.get("ema", {}).get("decay", 0.0)), "mixup": bool(a.get("mixup_alpha", 0.0)),
          "CutMix": bool(a.get("cutmix_alpha", 0.0)), "random erasing": bool(a.get("random_erasing", 0.0))}


def program_key(config: ml_collections.ConfigDict) -> str:
  """Equal for configs that can share one program."""
  flat = flat_fields(config)
  shared = {k: v for k, v in flat.items()
            if k not in PER_RUN_FIELDS and not k.startswith(PER_RUN_PREFIXES)}
  shared["structure"] = _structure(config)
  return json.dumps(shared, sort_keys=True, default=str)


def check_packable(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Raises `ConfigError` naming the first field in which a config differs from the first
  in a way that cannot share a program."""
  first = flat_fields(configs[0])
  for other in configs[1:]:
    theirs = flat_fields(other)
    for key in sorted(set(first) | set(theirs)):
      if key in PER_RUN_FIELDS or key.startswith(PER_RUN_PREFIXES) or first.get(key) == theirs.get(key):
        continue
      raise config_lib.ConfigError(
          f"these runs cannot be packed into one program: {key} is {first.get(key)!r} in one and "
          f"{theirs.get(key)!r} in another (only seeds, initialisation, optimiser values and the values "
          "of PER_RUN_FIELDS may differ); "
          "train them apart (pack=False, --pack off) or make it equal")
    a, b = _structure(configs[0]), _structure(other)
    if a != b:
      key = next(k for k in a if a[k] != b[k])
      what = "steps" if key in STEP_PARTS else "optimiser states"
      raise config_lib.ConfigError(
          f"these runs cannot be packed into one program: their {what} differ in structure "
          f"({key}: {a[key]} vs {b[key]}); train them apart (pack=False, --pack off)")


def groups(configs: Sequence[ml_collections.ConfigDict]) -> List[List[int]]:
  """Indices of `configs` in groups that can each share one program, in first-seen order."""
  out: Dict[str, List[int]] = {}
  for i, config in enumerate(configs):
    out.setdefault(program_key(config), []).append(i)
  return list(out.values())


def over_runs(fn: Callable, in_axes: Sequence[Optional[int]]) -> Callable:
  """`fn` of one run, applied to every run of a leading run axis in the same kernels (`jax.vmap`).

  `in_axes`: 0 for a per-run argument, None for one shared by every run.
  """
  return jax.vmap(fn, in_axes=tuple(in_axes))


def stack(trees: Sequence[Any]) -> Any:
  """Trees of the same structure stacked on a new leading (run) axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def packs_by_default() -> bool:
  """Whether `pack="auto"` packs: on an accelerator; a CPU is compute-bound, so R runs packed
  cost what R runs alone cost there."""
  return stacks_runs(jax.default_backend())


def stacks_runs(platform: str) -> bool:
  """Whether a group of several runs on `platform` shares one program (`over_runs`): on an
  accelerator. A CPU trains them one after another, each with its own program (module docstring)."""
  return platform != "cpu"


def program_of(config: ml_collections.ConfigDict) -> str:
  """Equal for configs whose one-run train steps are the same program (they differ only in
  the seed and what is read only to initialise)."""
  flat = flat_fields(config)
  return json.dumps({k: v for k, v in flat.items() if k not in PER_RUN_FIELDS}, sort_keys=True, default=str)
