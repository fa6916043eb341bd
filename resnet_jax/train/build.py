"""From an experiment config to the objects that train: the one place that translates.

`train`, `evaluate`, `load_variables`, the CLI, `rj.compare` and the experiments all
build through here, so a config field means the same thing everywhere:

* `model`: `config.model.name` plus any `ResNet` field, with the number of classes from
  the dataset, the compute dtype from `config.dtype` (parameters float32) and the
  BatchNorm grouping from `config.bn` (`norm_options`' axis_name, group_size and
  unbiased_variance: the engine owns those, and `num_classes`, `dtype`, `param_dtype`).
* `optimizer`: the learning-rate schedule and Optax SGD of `config.optimizer` /
  `config.schedule`.
* `pipeline`: the input pipeline of `config.data` for a mesh.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

import resnet_jax.data as rjd
from resnet_jax import models
from resnet_jax.runtime import compilation_cache
from resnet_jax.train import config as config_lib
from resnet_jax.train import mesh as mesh_lib
from resnet_jax.train import optim


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
  return config_lib.choice("dtype", config.dtype, config_lib.DTYPES)


def bn_norm_options(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The `BatchNorm` options (`ResNet.norm_options`) that realise `config.bn.mode`.

  "global" and "per_device" need none: under `jax.jit` a BatchNorm sees the whole
  batch, under the step's `jax.shard_map` ("per_device") its device's shard.
  """
  mode = config_lib.choice("bn.mode", config.bn.mode, config_lib.BN_MODES)
  group_size = int(config.bn.ghost_batch_size) if mode == "ghost" else None
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
  """The configured network for a dataset of `num_classes` classes (`config` is validated)."""
  return models.create(config.model.name, num_classes=num_classes, dtype=compute_dtype(config),
                       param_dtype=jnp.float32, **model_fields(config))


def optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
              ) -> Tuple[optax.Schedule, optax.GradientTransformation]:
  """The learning-rate schedule and the Optax optimiser of `config`."""
  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch, total_steps)
  return schedule, optim.create_optimizer(config, schedule)


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


@dataclasses.dataclass
class Experiment:
  """Everything `train` needs, built from one config."""
  config: ml_collections.ConfigDict
  mesh: Mesh
  pipeline: rjd.Pipeline
  model: models.ResNet
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
  `config.data` to share (packed runs read one pipeline, each in its own order). Also switches on JAX's persistent compilation cache (`resnet_jax.runtime.compilation_cache`;
  `RESNET_JAX_COMPILATION_CACHE=off` keeps it off), so a restarted run loads its compiled steps.
  """
  config_lib.validate(config)
  compilation_cache.enable()
  mesh = mesh_lib.create_mesh() if mesh is None else mesh
  pipe = pipeline(config, mesh) if pipe is None else pipe
  steps_per_epoch = int(pipe.steps_per_epoch)
  if steps_per_epoch < 1:
    raise config_lib.ConfigError(
        f"global_batch_size={config.global_batch_size} is larger than the {pipe.num_train_examples} "
        f"examples of data.train_split={config.data.train_split!r}")
  total_steps = config_lib.num_train_steps(config, steps_per_epoch)
  net = model(config, pipe.num_classes)
  schedule, tx = optimizer(config, steps_per_epoch, total_steps)
  return Experiment(config, mesh, pipe, net, schedule, tx, steps_per_epoch, total_steps)
