"""Shared base of every experiment config (ml_collections).

An experiment file calls one of the `*_config` helpers below from its
`get_config(arg=None)`; `arg == "smoke"` (`configs/<name>.py:smoke`) selects a
tiny variant that trains for a few steps on CPU in seconds. Every field can be
overridden on the command line: `--config.optimizer.learning_rate=0.05`.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import ml_collections

from resnet_jax import errors
import resnet_jax.data as rjd


def base_config() -> ml_collections.ConfigDict:
  """Defaults: He et al. 2015 §4.2 (CIFAR-10, batch 128 on 2 GPUs, SGD 0.9, wd 1e-4, 64k iterations)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # `name` for `resnet_jax.models.create` plus any ResNet field to override (the number
  # of classes comes from the dataset, the dtype from `dtype`, BN fields from `bn`).
  c.model = ml_collections.ConfigDict({"name": "cifar_resnet20"})
  # Compute dtype; parameters and BN statistics are always float32.
  c.dtype = "float32"
  c.data = rjd.default_config("cifar10")
  c.global_batch_size = 128
  c.eval_batch_size = 500
  # BatchNorm statistics: "global" (whole batch), "per_device" (each device's shard), "ghost"
  # (groups of `ghost_batch_size` examples). The papers normalised per GPU: 128 images on 2
  # GPUs for CIFAR (He et al. 2015 §4.2, 2016), so the paper configs use ghost groups of the
  # papers' per-GPU batch on any hardware; `--config.bn.mode=global` synchronises instead.
  # `unbiased_variance`: the running variance averages the unbiased batch variance, as the
  # papers' frameworks (Caffe, Torch7) and PyTorch do.
  c.bn = ml_collections.ConfigDict({"mode": "ghost", "ghost_batch_size": 64, "unbiased_variance": True})
  c.optimizer = ml_collections.ConfigDict({
      "learning_rate": 0.1,             # at `schedule.reference_batch_size` when that is set
      "momentum": 0.9,
      "nesterov": False,
      "weight_decay": 1e-4,
      "weight_decay_mode": "coupled",   # coupled L2 (papers) | decoupled
      "weight_decay_exclude": "",       # regex over param paths, e.g. r"(bias|scale)$"
      # The parameters matching this regex learn at learning_rate × the factor (Fixup's scalars: 0.1).
      "scaled_learning_rate_params": "",
      "scaled_learning_rate_factor": 1.0,
  })
  c.schedule = ml_collections.ConfigDict({
      "name": "step",                   # step | cosine | constant
      "reference_batch_size": 0,        # >0: lr = base × global_batch / reference (Goyal et al.)
      "unit": "steps",                  # unit of boundaries and warmup_length: steps | epochs
      "boundaries": (32000, 48000),
      "decay_factor": 0.1,
      "warmup_length": 0.0,
      "warmup_mode": "constant",        # constant (He et al. 2015 ResNet-110) | linear
      "warmup_learning_rate": 0.01,     # the warm-up value (constant) or start (linear)
  })
  c.label_smoothing = 0.0
  # Training length: exactly one of num_steps / num_epochs is positive.
  c.num_steps = 64000
  c.num_epochs = -1.0
  c.log_every_steps = 100
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 2000
  c.keep_checkpoints = 3
  c.keep_best_checkpoints = 1
  c.steps_per_dispatch = 1             # >1: several steps per dispatch with lax.scan
  # >0: every N steps, record the gradient highway (He et al. 2016, Eq. 5) of a fixed batch
  # (kind "gradient_highway" in metrics.jsonl and TensorBoard; resnet_jax/train/highway_log.py).
  c.gradient_highway_every_steps = 0
  c.async_checkpoints = True
  # Start from the weights (params and BN statistics) of another run, "WORKDIR" (its latest
  # checkpoint), "WORKDIR:best" or "WORKDIR:STEP", with a fresh optimiser, schedule and data
  # order: fine-tuning, or continuing deliberately with a changed recipe in a new workdir.
  c.init_from = ""
  return c


def _set_model(c: ml_collections.ConfigDict, name: str, fields: Dict[str, Any]) -> None:
  c.model = ml_collections.ConfigDict({"name": name, **fields})


def smoke(c: ml_collections.ConfigDict, model_fields: Dict[str, Any], image_size: Optional[int] = None,
          ) -> ml_collections.ConfigDict:
  """Tiny variant: a narrow one-unit-per-stage net, 20 steps of batch 32, a short eval split."""
  _set_model(c, c.model.name, {**{k: v for k, v in c.model.items() if k != "name"}, **model_fields})
  if image_size is not None:
    c.data.image_size = image_size
  c.global_batch_size = 32
  c.eval_batch_size = 100
  c.num_steps = 20
  c.num_epochs = -1.0
  c.schedule.unit = "steps"
  c.schedule.boundaries = (10, 15)
  c.schedule.warmup_length = min(c.schedule.warmup_length, 2.0)
  c.data.train_split = "train[:640]"
  c.data.eval_split = "test[:200]"
  c.log_every_steps = 5
  c.checkpoint_every_steps = 10
  fit_ghost_batch(c)
  return c


def fit_ghost_batch(c: ml_collections.ConfigDict) -> None:
  """Smoke batches are small: keep two ghost BatchNorm groups per batch at most."""
  c.bn.ghost_batch_size = max(1, min(int(c.bn.ghost_batch_size), c.global_batch_size // 2))


CIFAR_SMOKE_BASIC = {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 16), "stem_width": 4}
CIFAR_SMOKE_BOTTLENECK = {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 16), "stem_width": 4}
CIFAR_SMOKE_RESNEXT = {"stage_sizes": (1, 1, 1), "stage_widths": (8, 16, 32), "stem_width": 8,
                       "cardinality": 2, "bottleneck_width": 4}
IMAGENET_SMOKE = {"stage_sizes": (1, 1, 1, 1), "stage_widths": (4, 8, 16, 32), "stem_width": 8}
IMAGENET_SMOKE_RESNEXT = {**IMAGENET_SMOKE, "cardinality": 2, "bottleneck_width": 2}


def cifar_resnet_config(model: str, dataset: str = "cifar10", warmup: bool = False,
                        arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """He et al. 2015 §4.2 / He et al. 2016 appendix: 0.1, ÷10 at 32k and 48k, stop at 64k.

  `warmup`: 0.01 for the first 400 iterations (He et al. 2015: ResNet-110 and deeper;
  He et al. 2016: every CIFAR run).
  """
  c = base_config()
  c.data = rjd.default_config(dataset)
  _set_model(c, model, {})
  if warmup:
    c.schedule.warmup_length = 400.0
    c.schedule.warmup_mode = "constant"
    c.schedule.warmup_learning_rate = 0.01
  if arg == "smoke":
    bottleneck = "preact_resnet164" in model or "preact_resnet1001" in model
    smoke(c, CIFAR_SMOKE_BOTTLENECK if bottleneck else CIFAR_SMOKE_BASIC)
  elif arg:
    raise errors.InputError(f"unknown config variant {arg!r}; valid: 'smoke' or none")
  return c


def cifar_epochs_config(model: str, model_fields: Dict[str, Any], num_epochs: float, boundaries: tuple
                        ) -> ml_collections.ConfigDict:
  """A CIFAR-10 recipe of the later papers, counted in epochs: batch 128, SGD momentum 0.9, lr 0.1
  ÷10 at `boundaries` (epochs), per-channel normalisation (their code's), He et al. 2015's
  augmentation; the papers' own choices beyond these are set by their config files."""
  c = base_config()
  _set_model(c, model, model_fields)
  c.num_steps = -1
  c.num_epochs = float(num_epochs)
  c.schedule.unit = "epochs"
  c.schedule.boundaries = tuple(float(b) for b in boundaries)
  c.data.normalization = "per_channel"
  return c


def with_variant(c: ml_collections.ConfigDict, arg: Optional[str]) -> ml_collections.ConfigDict:
  """`c`, or its smoke variant (`arg == "smoke"`) of a basic-block CIFAR net."""
  if arg == "smoke":
    return smoke(c, CIFAR_SMOKE_BASIC)
  if arg:
    raise errors.InputError(f"unknown config variant {arg!r}; valid: 'smoke' or none")
  return c


def cifar_resnext_config(model: str, dataset: str = "cifar10",
                         arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """Xie et al. 2017 App. A: batch 128 on 8 GPUs (BN groups of 16), wd 5e-4, 300 epochs,
  ÷10 at epochs 150 and 225."""
  c = base_config()
  c.bn.ghost_batch_size = 16
  c.data = rjd.default_config(dataset)
  _set_model(c, model, {})
  c.optimizer.weight_decay = 5e-4
  c.num_steps = -1
  c.num_epochs = 300.0
  c.schedule.unit = "epochs"
  c.schedule.boundaries = (150.0, 225.0)
  c.checkpoint_every_steps = 5000
  if arg == "smoke":
    smoke(c, CIFAR_SMOKE_RESNEXT)
  elif arg:
    raise errors.InputError(f"unknown config variant {arg!r}; valid: 'smoke' or none")
  return c


RECIPES = ("resnet", "resnext")


def imagenet_config(model: str, num_epochs: float = 90.0, recipe: str = "resnet",
                    arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """ImageNet: batch 256 on 8 GPUs (BN groups of 32), 0.1, ÷10 every 30 epochs.

  recipe "resnet": He et al. 2015 §3.4, scale augmentation S ~ U[256, 480] and AlexNet
  PCA lighting, plain momentum (Caffe), the schedule of fb.resnet.torch/torchvision.
  recipe "resnext": Xie et al. 2017 §4, trained with fb.resnet.torch's pipeline:
  Inception-style scale + aspect-ratio crop, color jitter 0.4, PCA lighting 0.1,
  Nesterov momentum.
  """
  if recipe not in RECIPES:
    raise errors.InputError(f"unknown ImageNet recipe {recipe!r}; valid: {', '.join(RECIPES)}")
  c = base_config()
  c.data = rjd.default_config("imagenet2012")
  c.data.pca_lighting = True
  c.bn.ghost_batch_size = 32
  if recipe == "resnext":
    c.data.train_augment = "inception"
    c.data.color_jitter = 0.4
    c.optimizer.nesterov = True
  _set_model(c, model, {})
  c.global_batch_size = 256
  c.eval_batch_size = 250
  c.num_steps = -1
  c.num_epochs = num_epochs
  c.schedule.unit = "epochs"
  c.schedule.boundaries = tuple(float(e) for e in range(30, int(num_epochs), 30))
  c.log_every_steps = 500
  c.checkpoint_every_steps = 5000
  if arg == "smoke":
    smoke(c, IMAGENET_SMOKE_RESNEXT if "resnext" in model else IMAGENET_SMOKE, image_size=64)
    c.data.eval_resize = 73
    c.data.scale_range = (64, 120)
    c.global_batch_size = 16
    c.eval_batch_size = 16
    c.num_steps = 4
    c.schedule.boundaries = (2, 3)
    c.log_every_steps = 2
    c.checkpoint_every_steps = 2
    c.data.train_split = "train[:64]"
    c.data.eval_split = "validation[:32]"
    fit_ghost_batch(c)
  elif arg:
    raise errors.InputError(f"unknown config variant {arg!r}; valid: 'smoke' or none")
  return c
