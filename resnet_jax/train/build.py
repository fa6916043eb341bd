"""From an experiment config to the objects that train: the one place that checks and translates.

`train`, `evaluate`, `load_variables`, the CLI, `rj.compare` and the experiments all
build through here, so a config field means the same thing everywhere:

* `validate`: every field checked once, in one line naming the field and what is valid;
  it returns the network the config describes, which building uses as it is (nothing
  downstream checks again).
* `model`: `config.model.name` plus any `ResNet` field, with the number of classes from
  the dataset, the compute dtype from `config.dtype` (parameters float32) and the
  BatchNorm grouping from `config.bn` (`norm_options`' axis_name, group_size and
  unbiased_variance: the engine owns those, and `num_classes`, `dtype`, `param_dtype`).
* `optimizer`: the learning-rate schedule and Optax SGD of `config.optimizer` /
  `config.schedule`.
* `pipeline`: the input pipeline of `config.data` for a mesh.
* `experiment`: all of them, and the network the train step differentiates on this
  platform (`step.model_for_platform`).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Dict, Optional, Tuple

import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

import resnet_jax.data as rjd
from resnet_jax import models
from resnet_jax.configs import base as base_configs
from resnet_jax.runtime import compilation_cache
from resnet_jax.runtime import mesh as mesh_lib
from resnet_jax.train import config as config_lib
from resnet_jax.train import optim
from resnet_jax.train import step as step_lib
from resnet_jax.train.config import ConfigError, choice


def bn_norm_options(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The `BatchNorm` options (`ResNet.norm_options`) that realise `config.bn.mode`.

  "global" and "per_device" need none: under `jax.jit` a BatchNorm sees the whole
  batch, under the step's `jax.shard_map` ("per_device") its device's shard.
  """
  group_size = int(config.bn.ghost_batch_size) if config.bn.mode == "ghost" else None
  return {"axis_name": None, "group_size": group_size,
          "unbiased_variance": bool(config.bn.get("unbiased_variance", False))}


def model_fields(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """`config.model`'s fields with the engine's BatchNorm options in `norm_options`, where the
  network's norm is `BatchNorm` (a GroupNorm network has no batch statistics to group)."""
  fields = config_lib.model_fields(config)
  norm = models.part_class(models.NORMS.resolve(
      fields.get("norm", models.config(config.model.name).get("norm", "batch"))))
  if norm is not None and issubclass(norm, models.BatchNorm):
    fields["norm_options"] = {**(fields.get("norm_options") or {}), **bn_norm_options(config)}
  return fields


def model_spec(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """`config.model` as plain data (name and fields): what a checkpoint's fingerprint records."""
  return {"name": config.model.name, **config_lib.model_fields(config)}


def model(config: ml_collections.ConfigDict, num_classes: int) -> models.ResNet:
  """The configured network for a dataset of `num_classes` classes (`config` is a valid one)."""
  return models.create(config.model.name, num_classes=num_classes, dtype=config_lib.DTYPES[config.dtype],
                       param_dtype=jnp.float32, **model_fields(config))


# -- validation ------------------------------------------------------------------------
# Fields that are real numbers: the interval each must lie in ("[0, inf)": finite, not negative).
# NaN and infinity pass a sign test and failed later (a NaN report at step 2, an OverflowError).
NUMBER_RANGES = {
    "optimizer.learning_rate": "(0, inf)", "optimizer.momentum": "[0, 1)",
    "optimizer.weight_decay": "[0, inf)", "schedule.decay_factor": "(0, inf)",
    "schedule.warmup_learning_rate": "[0, inf)", "schedule.warmup_length": "[0, inf)",
    "schedule.reference_batch_size": "[0, inf)", "label_smoothing": "[0, 1)",
    # the modern recipes' parts
    "optimizer.b1": "[0, 1)", "optimizer.b2": "[0, 1)", "optimizer.eps": "[0, inf)",
    "optimizer.clip_grad_norm": "[0, inf)", "optimizer.trust_coefficient": "(0, inf)",
    "schedule.end_learning_rate": "[0, inf)", "schedule.power": "(0, inf)",
    "ema.decay": "[0, 1)", "ema.warmup_gamma": "(0, inf)", "ema.warmup_power": "(0, inf)",
    "augmentation.magnitude": "[0, 30]", "augmentation.magnitude_std": "[0, inf)",
    "augmentation.mixup_alpha": "[0, inf)", "augmentation.cutmix_alpha": "[0, inf)",
    "augmentation.random_erasing": "[0, 1]", "augmentation.mix_prob": "[0, 1]", "augmentation.switch_prob": "[0, 1]",
    "optimizer.scaled_learning_rate_factor": "[0, inf)",
}


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _check_number(name: str, value: Any, interval: str) -> None:
  """A `ConfigError` unless `value` is a finite number in `interval` ("(0, inf)", "[0, 1)")."""
  low, high = (float(b) for b in interval[1:-1].split(","))
  number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if not (number and (low <= value if interval[0] == "[" else low < value)
          and (value < high if interval[-1] == ")" else value <= high)):
    raise ConfigError(f"{name}={value} must be a finite number in {interval}")


def _is_count(value: Any) -> bool:
  """A whole number of at least 1 (not a bool, which Python counts as an int)."""
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_length(config: ml_collections.ConfigDict) -> None:
  if not 0 <= int(config.seed) <= config_lib.MAX_SEED:
    raise ConfigError(f"seed={config.seed} must be in [0, {config_lib.MAX_SEED}] (2**32 - 1)")
  if not math.isfinite(config.num_epochs):
    raise ConfigError(f"num_epochs={config.num_epochs} must be a finite number (or -1, with num_steps)")
  if (config.num_steps > 0) == (config.num_epochs > 0):
    raise ConfigError(f"exactly one of num_steps={config.num_steps} and num_epochs={config.num_epochs} "
                      "must be positive")
  if config.num_steps > config_lib.MAX_STEPS:
    raise ConfigError(f"num_steps={config.num_steps} must be at most {config_lib.MAX_STEPS:,} (2**31 - 1: the "
                      "step counter is a 32-bit integer)")


def _check_choices(config: ml_collections.ConfigDict) -> None:
  if config.dtype == "float16":
    raise ConfigError("dtype='float16' is not supported: training in float16 needs loss scaling, which "
                      "this engine does not do; use dtype='bfloat16' (float32's range, the same speed on "
                      "GPUs and TPUs that have it)")
  choices = {
      "bn.mode": (config.bn.mode, config_lib.BN_MODES),
      "dtype": (config.dtype, config_lib.DTYPE_NAMES),
      "schedule.name": (config.schedule.name, config_lib.SCHEDULES),
      "schedule.unit": (config.schedule.unit, config_lib.SCHEDULE_UNITS),
      "schedule.warmup_mode": (config.schedule.warmup_mode, config_lib.WARMUP_MODES),
      "optimizer.weight_decay_mode": (config.optimizer.weight_decay_mode, config_lib.WEIGHT_DECAY_MODES),
      "optimizer.name": (config.optimizer.name, config_lib.OPTIMIZER_NAMES),
      "loss": (config.loss, config_lib.LOSSES),
      "augmentation.policy": (config.augmentation.policy, config_lib.AUGMENT_POLICIES),
  }
  for name, (value, valid) in choices.items():
    choice(name, value, valid)


def _check_counts(config: ml_collections.ConfigDict) -> None:
  for name in ("global_batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps",
               "steps_per_dispatch", "eval_every_epochs", "keep_checkpoints"):
    if int(config[name]) < 1:
      raise ConfigError(f"{name}={config[name]} must be at least 1")
  nonnegative = {"keep_best_checkpoints": config.keep_best_checkpoints}
  for name in ("num_threads", "num_workers", "padding", "prefetch_batches"):
    if name in config.data:
      nonnegative[f"data.{name}"] = config.data[name]
  if "gradient_highway_every_steps" in config:
    nonnegative["gradient_highway_every_steps"] = config.gradient_highway_every_steps
  for name, value in nonnegative.items():
    if value is not None and value < 0:
      raise ConfigError(f"{name}={value} must not be negative")
  if config.bn.mode == "ghost":
    size = int(config.bn.ghost_batch_size)
    if size <= 0 or config.global_batch_size % size:
      raise ConfigError(f"bn.ghost_batch_size={size} must be positive and divide "
                        f"global_batch_size={config.global_batch_size}")


def _check_data(config: ml_collections.ConfigDict) -> None:
  """Splits that select examples, and a padding whose memory is that of an image (100,000 pixels
  of padding asked for 80 GB per batch and was killed without a word)."""
  try:
    info = rjd.dataset_info(config.data.name)
  except ValueError as e:
    raise ConfigError(f"data.name: {e}") from None
  for name in ("train_split", "eval_split"):
    split = config.data[name]
    if info.num_examples(split) == 0:
      raise ConfigError(f"data.{name}={split!r} selects no examples of {config.data.name} (its splits: "
                        f"{', '.join(f'{k} {v:,}' for k, v in info.splits.items())}), e.g. 'train[:45000]'")
  side = int(info.image_shape[0])
  if "padding" in config.data and config.data.padding is not None and config.data.padding > side:
    raise ConfigError(f"data.padding={config.data.padding} must be at most {side}, the side of a "
                      f"{config.data.name} image (the paper pads 4; each padded image holds "
                      f"(side + 2 × padding)² pixels)")


def _check_schedule_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> None:
  """The schedule's step counts fit the 32-bit step counter (an OverflowError inside jit)."""
  s = config.schedule
  per_unit = steps_per_epoch if s.unit == "epochs" else 1
  for name, value in [("warmup_length", s.warmup_length)] + [("boundaries", b) for b in s.boundaries]:
    if value * per_unit > config_lib.MAX_STEPS:
      raise ConfigError(f"schedule.{name}={value} ({s.unit}) is {value * per_unit:,.0f} steps: at most "
                        f"{config_lib.MAX_STEPS:,} (2**31 - 1: the step counter is a 32-bit integer)")


def _check_optimizer(config: ml_collections.ConfigDict) -> None:
  for name, interval in NUMBER_RANGES.items():
    _check_number(name, _field(config, name), interval)
  o, s = config.optimizer, config.schedule
  if not (isinstance(s.boundaries, (tuple, list))
          and all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b >= 0
                  for b in s.boundaries)):
    raise ConfigError(f"schedule.boundaries={s.boundaries!r} must be a tuple of finite non-negative numbers, "
                      "e.g. '(32000, 48000)'")
  for field in ("weight_decay_exclude", "scaled_learning_rate_params"):
    try:
      re.compile(o.get(field, ""))
    except re.error as e:
      raise ConfigError(f"optimizer.{field}={o[field]!r} is not a regular expression ({e})") from None


def _check_accumulation(config: ml_collections.ConfigDict) -> None:
  k, batch = config.accumulation_steps, config.global_batch_size
  if not _is_count(k) or batch % k:
    raise ConfigError(f"accumulation_steps={k!r} must be a positive integer dividing "
                      f"global_batch_size={batch}")
  if config.bn.mode == "ghost" and (batch // k) % int(config.bn.ghost_batch_size):
    raise ConfigError(f"accumulation_steps={k}: micro-batches of {batch // k} examples are not a multiple "
                      f"of bn.ghost_batch_size={config.bn.ghost_batch_size}")


def _check_ema(config: ml_collections.ConfigDict) -> None:
  e = config.ema
  if e.keep_best and not e.decay:
    raise ConfigError("ema.keep_best=True ranks checkpoints by the EMA's error, but ema.decay=0 keeps no "
                      "EMA; set ema.decay (e.g. 0.9998) or ema.keep_best=False")


def _check_augmentation(config: ml_collections.ConfigDict) -> None:
  a = config.augmentation
  if not _is_count(a.num_ops):
    raise ConfigError(f"augmentation.num_ops={a.num_ops!r} must be a positive integer")
  repeats = config.data.get("repeated_augmentation", 1)
  if not _is_count(repeats):
    raise ConfigError(f"data.repeated_augmentation={repeats!r} must be a positive integer (1: off)")


def _checked_model(config: ml_collections.ConfigDict) -> models.ResNet:
  """The network of `config` for its dataset's classes, or a `ConfigError` naming the field."""
  norm_options = config.model.get("norm_options") or {}
  config_lib.check_override_keys(config, [f"model.{k}" for k in config.model if k != "name"]
                                 + [f"model.norm_options.{k}" for k in norm_options])
  num_classes = rjd.dataset_info(config.data.name).num_classes  # a known name: `_check_data`
  try:
    return model(config, num_classes)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"model: {e}") from None


def validate(config: ml_collections.ConfigDict) -> models.ResNet:
  """One-line `ConfigError`s for values that would otherwise fail deep inside JAX or Optax;
  returns the network `config` describes (for its dataset's classes)."""
  for check in (_check_length, _check_choices, _check_counts, _check_optimizer, _check_data, _check_accumulation,
                _check_ema, _check_augmentation):
    check(config)
  net = _checked_model(config)
  if config.get("init_from"):
    config_lib.parse_init_from(config.init_from)
  return net


# -- building --------------------------------------------------------------------------
def optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
              ) -> Tuple[optax.Schedule, optax.GradientTransformation]:
  """The learning-rate schedule and the Optax optimiser of `config`."""
  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch, total_steps)
  return schedule, optim.create_optimizer(config, schedule)


def field_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The engine's default of every field of `config`'s kind (`configs.base.base_config` with its
  dataset's `default_config`): a run saved before a field existed trained with what its default
  does (`Workdir.check_resumable`)."""
  defaults = base_configs.base_config()
  defaults.data = rjd.default_config(config.data.name)
  return defaults


def eval_batch_size(config: ml_collections.ConfigDict, num_devices: int) -> int:
  """`config.eval_batch_size` rounded up to a multiple of the devices.

  Evaluation pads and masks its last batch, so any batch size counts every example
  once; rounding lets the default configs start on any number of devices (8 GPUs, a
  TPU pod slice) without an override.
  """
  size = int(config.eval_batch_size)
  return -(-size // num_devices) * num_devices


def pipeline(config: ml_collections.ConfigDict, mesh: Optional[Mesh] = None) -> rjd.Pipeline:
  """The input pipeline of `config.data` on `mesh` (default: every device)."""
  mesh = mesh_lib.create_mesh() if mesh is None else mesh
  return rjd.create_pipeline(config.data, global_batch_size=config.global_batch_size,
                             eval_batch_size=eval_batch_size(config, mesh.shape[mesh_lib.DATA_AXIS]),
                             mesh=mesh, seed=config.seed)


def _check_local_accumulation(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """bn.mode="per_device" splits each device's rows into the micro-batches."""
  k = int(config.accumulation_steps)
  if k > 1 and config.bn.mode == "per_device" and (config.global_batch_size // num_devices) % k:
    raise ConfigError(f"accumulation_steps={k} must divide the {config.global_batch_size // num_devices} "
                      f"examples per device (global_batch_size={config.global_batch_size} on {num_devices} "
                      "devices) with bn.mode='per_device'")


@dataclasses.dataclass
class Experiment:
  """Everything `train` needs, built from one config.

  `model` is the network as configured (evaluation, checkpoints, loading); `train_model`
  the same network as the train step differentiates it on this platform.
  """
  config: ml_collections.ConfigDict
  mesh: Mesh
  pipeline: rjd.Pipeline
  model: models.ResNet
  train_model: models.ResNet
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  steps_per_epoch: int
  total_steps: int

  @property
  def image_shape(self) -> Tuple[int, ...]:
    return tuple(self.pipeline.image_shape)

  @property
  def num_classes(self) -> int:
    return int(self.pipeline.num_classes)


def experiment(config: ml_collections.ConfigDict, mesh: Optional[Mesh] = None,
               pipe: Optional[rjd.Pipeline] = None) -> Experiment:
  """Validates `config` (the one place that does) and builds its pipeline, model and optimiser.

  Everything downstream trusts the built experiment. `pipe`: an input pipeline of the same
  `config.data` to share (packed runs read one pipeline, each in its own order). Also
  switches on JAX's persistent compilation cache (`resnet_jax.runtime.compilation_cache`;
  `RESNET_JAX_COMPILATION_CACHE=off` keeps it off), so a restarted run loads its compiled steps.
  """
  net = validate(config)
  compilation_cache.enable()
  mesh = mesh_lib.create_mesh() if mesh is None else mesh
  pipe = pipeline(config, mesh) if pipe is None else pipe
  steps_per_epoch = int(pipe.steps_per_epoch)
  if steps_per_epoch < 1:
    raise ConfigError(
        f"global_batch_size={config.global_batch_size} is larger than the {pipe.num_train_examples} "
        f"examples of data.train_split={config.data.train_split!r}")
  _check_local_accumulation(config, mesh.shape[mesh_lib.DATA_AXIS])
  total_steps = config_lib.num_train_steps(config, steps_per_epoch)
  _check_schedule_steps(config, steps_per_epoch)
  schedule, tx = optimizer(config, steps_per_epoch, total_steps)
  train_model = step_lib.model_for_platform(net, mesh.devices.flat[0].platform, int(config.steps_per_dispatch))
  return Experiment(config, mesh, pipe, net, train_model, schedule, tx, steps_per_epoch, total_steps)
